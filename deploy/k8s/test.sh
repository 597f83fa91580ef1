#!/usr/bin/env bash
# Offline checks of the Kubernetes manifests (no cluster can run here):
#  1. deploy/k8s/herd.yaml is what render.py makes of deploy/k8s/herd.toml;
#  2. herd itself accepts the herd file: `herd certs` parses it and makes the peer
#     credentials, and render.py turns them into the Secret herd-peer;
#  3. every manifest, the Secret too, validates strictly (unknown fields are errors)
#     against the schemas of a pinned Kubernetes version, with PyPI's
#     kubernetes-validate, installed into the tests' venv (target/tools).
# Usage: deploy/k8s/test.sh [HERD_BINARY]   (default target/debug/herd)
set -euo pipefail
cd "$(dirname "$0")/../.."
HERD=${1:-target/debug/herd}
K8S_VERSION=${K8S_VERSION:-1.30.0}
tools=target/tools
[ -x "$tools/bin/python" ] || python3 -m venv "$tools"
if ! "$tools/bin/kubernetes-validate" --version >/dev/null 2>&1; then
    "$tools/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 deploy/k8s/render.py check deploy/k8s/herd.toml deploy/k8s/herd.yaml
echo "ok: herd.yaml is render.py's output for herd.toml"

# As an operator would: the secret first (the herd file names it), then the certificates.
cp deploy/k8s/herd.toml "$work/herd.toml"
mkdir -p "$work/certs"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/certs/herd.secret"
"$HERD" certs --config "$work/herd.toml" --out "$work/certs" >/dev/null
python3 deploy/k8s/render.py secret "$work/certs" > "$work/secret.yaml"
echo "ok: herd accepts herd.toml; the Secret herd-peer is rendered from herd certs"

"$tools/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" \
    deploy/k8s/herd.yaml "$work/secret.yaml"
echo "ok: every manifest validates strictly against Kubernetes $K8S_VERSION"
