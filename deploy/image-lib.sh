# Shared by deploy/test.sh and deploy/swarm-test.sh (sourced, not run): builds the
# herd's image on this machine with no registry. The static binary is built on the
# host, the base image made with `docker import` (deploy/base-image.sh) and the herd
# image with `docker build --network none` (deploy/Dockerfile.prebuilt): nothing is
# pulled. The caller defines pass, abort and step (PASS/FAIL lines), and runs from
# the repository root.

# Builds the static, stripped server binary; sets binary (its path) and cargo_secs.
image_build_binary() {
    local triple t
    triple=$(rustc -vV | sed -n 's/^host: //p')
    binary=target/$triple/image/herd
    rustup target list --installed 2>/dev/null | grep -qx "$triple" ||
        abort "rust target $triple is not installed (rustup target add $triple)"
    step "cargo build --profile image --target $triple -p herd --bin herd (static, stripped)"
    t=$SECONDS
    # Only the server: the load generator (bench/) is not part of the image.
    HERD_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown) \
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --profile image --locked --target "$triple" -p herd --bin herd || abort "cargo build"
    cargo_secs=$((SECONDS - t))
    ldd "$binary" 2>&1 | grep -qE 'statically linked|not a dynamic executable' ||
        abort "$binary is dynamically linked"
    pass "static binary $binary"
}

# Makes a herd secret and a CA and a certificate per server of HERD_FILE in DIR,
# readable by the image's user 10001 (DIR is a test directory).
image_make_certs() { # HERD_FILE DIR
    mkdir -p "$2"
    python3 -c 'import secrets; print(secrets.token_hex(32))' >"$2/herd.secret"
    "$binary" certs --config "$1" --out "$2" >/dev/null ||
        abort "herd certs --config $1 --out $2"
    chmod a+rx "$2" && chmod a+r "$2"/*
    pass "herd secret and a CA and certificate per server made"
}

# Builds BASE (docker import) and IMAGE on it (docker build --network none), from
# $binary. Every image, intermediate ones of a failed build included, carries the
# label herd.test=LABEL, for image_remove.
image_build() { # IMAGE BASE LABEL
    step "base image (docker import) and herd image (docker build --network none)"
    deploy/base-image.sh "$2" --change "LABEL herd.test=$3" >/dev/null ||
        abort "deploy/base-image.sh"
    docker build --network none --force-rm -q -f deploy/Dockerfile.prebuilt \
        --build-arg "RUNTIME_IMAGE=$2" --build-arg "HERD_BINARY=$binary" \
        -t "$1" . 2> >(grep -v -e DEPRECATED -e buildx -e 'BuildKit' -e '^ *$' >&2) >/dev/null ||
        abort "docker build -f deploy/Dockerfile.prebuilt"
    pass "image $1 built with --network none"
}

# Removes every image labelled herd.test=LABEL.
image_remove() { # LABEL
    local round ids
    for round in 1 2 3 4 5; do # children before parents: repeat until none is left
        ids=$(docker images -aq --filter "label=herd.test=$1")
        [[ -z $ids ]] && break
        docker rmi -f $ids >/dev/null 2>&1
    done
}
