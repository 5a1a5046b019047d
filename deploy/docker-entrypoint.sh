#!/bin/sh
# Entry point of the Cube image (deploy/Dockerfile).
#
#   docker-entrypoint.sh COMMAND [ARG...]      run a Cube program (cube-api, cube-master, ...)
#   docker-entrypoint.sh install-tls UID:GID SRC DST [SRC DST ...]
#
# install-tls copies TLS directories for a service that runs as UID: Kubernetes mounts a Secret's
# files owned by root, and a non-root reader could only get at them through fsGroup, which makes
# them group-readable -- and the services refuse a key readable by group or others
# (cube_common/mtls.py). So an init container, root with CHOWN and FOWNER only, copies each SRC
# directory to DST.
#
# Invariants: DST is a directory 0700 owned by UID:GID; every private key in it (tls.key, ca.key,
# key.pem, *.key) is 0600 and every other file 0644, both owned by UID:GID; only the regular files
# directly in SRC are copied, following the symlinks a Secret volume is made of and skipping its
# dot entries (..data); a SRC with no file fails, so a missing Secret key stops the pod at once.
set -eu

install_tls() {
    owner=$1
    shift
    uid=${owner%%:*}
    gid=${owner#*:}
    case "$uid:$gid" in
        *[!0-9:]* | :* | *: ) echo "install-tls: want numeric UID:GID, got '$owner'" >&2; exit 2 ;;
    esac
    if [ $# -eq 0 ] || [ $(($# % 2)) -ne 0 ]; then
        echo "install-tls: want SRC DST pairs" >&2
        exit 2
    fi
    while [ $# -gt 0 ]; do
        src=$1
        dst=$2
        shift 2
        install -d -m 0700 -o "$uid" -g "$gid" "$dst"
        copied=0
        for f in "$src"/*; do
            [ -f "$f" ] || continue
            name=${f##*/}
            case "$name" in
                *.key | key.pem) mode=0600 ;;
                *) mode=0644 ;;
            esac
            install -m "$mode" -o "$uid" -g "$gid" "$f" "$dst/$name"
            copied=$((copied + 1))
        done
        if [ "$copied" -eq 0 ]; then
            echo "install-tls: no files in $src (is the Secret there?)" >&2
            exit 1
        fi
        echo "install-tls: $src -> $dst ($copied files, owner $uid:$gid)"
    done
}

if [ "${1:-}" = "install-tls" ]; then
    shift
    [ $# -ge 1 ] || { echo "install-tls: want UID:GID SRC DST [SRC DST ...]" >&2; exit 2; }
    install_tls "$@"
    exit 0
fi

if [ $# -eq 0 ]; then
    echo "usage: docker-entrypoint.sh COMMAND [ARG...] | install-tls UID:GID SRC DST [SRC DST ...]" >&2
    exit 2
fi
exec "$@"
