#!/usr/bin/env bash
# Makes the base image of deploy/Dockerfile.prebuilt from this host's files, with
# no registry and no pull: `docker import` of a small tarball holding the host's
# CA bundle, deploy/rootfs (passwd and group with the herd user 10001,
# nsswitch.conf) and /var/log/herd and /var/lib/herd (a data dir's mount point)
# owned by that user.
# Usage: deploy/base-image.sh [TAG [DOCKER-IMPORT-OPTION...]]
#        (TAG defaults to herd-base:local; prints the tag)
set -euo pipefail

tag=${1:-herd-base:local}
deploy=$(cd "$(dirname "$0")" && pwd)
ca=/etc/ssl/certs/ca-certificates.crt

if [[ ! -s $ca ]] && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
    echo "base-image: no CA bundle; installing ca-certificates" >&2
    apt-get install -y --no-install-recommends ca-certificates >&2 ||
        { apt-get update >&2 && apt-get install -y --no-install-recommends ca-certificates >&2; }
fi
if [[ ! -s $ca ]]; then
    echo "base-image: no CA bundle at $ca: install the ca-certificates package" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root/etc/ssl/certs" "$root/var/log/herd" "$root/var/lib/herd"
cp -R "$deploy/rootfs/." "$root/"
cp -L "$ca" "$root/etc/ssl/certs/ca-certificates.crt"
chmod -R u=rwX,go=rX "$root"

# Owners are written into the tarball, so this needs neither root nor chown.
(cd "$root" && find . ! -path ./var/log/herd ! -path ./var/lib/herd -print0 |
    tar -cf "$work/base.tar" --numeric-owner --owner=0 --group=0 --null --no-recursion -T -)
(cd "$root" && tar -rf "$work/base.tar" --numeric-owner --owner=10001 --group=10001 ./var/log/herd ./var/lib/herd)
docker import --message "herd base: CA bundle, user 10001, /var/log/herd, /var/lib/herd" "${@:2}" \
    "$work/base.tar" "$tag" >/dev/null
echo "$tag"
