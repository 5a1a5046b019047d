#!/usr/bin/env bash
# Install what this machine lacks: Debian packages, the virtualenv and the pinned PyPI packages.
# Idempotent and quiet when nothing is missing; safe to run before every make target.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  qemu-system-x86 qemu-utils        # microVMs (TCG here, KVM on bare metal)
  mmdebstrap                         # guest base image and default template root
  e2fsprogs erofs-utils cpio zstd    # images and initramfs
  busybox-static kmod                # initramfs userland; depmod for the unpacked kernel
  gcc libc6-dev                      # the guest control agent (cube-ctl), linked statically
  iproute2                           # taps and network namespaces
  etcd-server etcd-client            # cluster state
  clang llvm libbpf1 libbpf-dev bpftool   # eBPF datapath
  libnss-myhostname                  # *.localhost resolves to loopback
  ca-certificates openssl
  docker-registry skopeo umoci apache2-utils   # OCI image tests: registry, image building, htpasswd
  chromium                           # the web console's browser test (tests/control/test_control_console.py)
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

VENV=.venv
stamp="$VENV/.cube-lock-$(sha256sum requirements.lock requirements-chart.lock pyproject.toml | sha256sum | cut -c1-16)"
if [[ ! -e "$stamp" ]]; then
  echo "setup: preparing $VENV from requirements.lock and requirements-chart.lock"
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  # The machine's pip config may name local indexes that do not exist; that warning is noise.
  pip_install() { "$VENV/bin/pip" install -q --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
  pip_install -r requirements.lock
  # The chart tests' tools (tests/chart); requirements.lock pins what they share with the rest.
  pip_install --ignore-requires-python -r requirements-chart.lock -c requirements.lock
  pip_install --no-deps -e .
  rm -f "$VENV"/.cube-lock-*
  touch "$stamp"
fi
