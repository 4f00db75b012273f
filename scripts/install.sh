#!/usr/bin/env bash
# Install everything pyflannel needs on a Debian 12 machine, as root:
# Debian packages (etcd, CNI plugins, firewall and network tools) and a
# virtualenv in .venv with the package and its test extras.
#   --image  also what building and running the container image takes (podman, runc,
#            mmdebstrap, openssl): scripts/build-image.sh and `flannelctl lab up --image`
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  etcd-server etcd-client containernetworking-plugins nftables iptables
  iproute2 iputils-ping tcpdump iperf3 python3 python3-venv python3-pip
  wireguard-go wireguard-tools
)
if [ "${1:-}" = "--image" ]; then
  APT_PACKAGES+=(podman runc mmdebstrap openssl)
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (network namespaces and netlink need it)" >&2
  exit 1
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install.sh: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's python3 (installed above), what a node runs, not whichever python3 comes first
# on PATH: a pyenv or hand-built one is often compiled without PGO/LTO, and on the lab
# machine made every flanneld start 30-40 ms slower.  PYTHON=... picks another.
PYTHON=${PYTHON:-/usr/bin/python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# editable_mode=compat: a .pth line naming the checkout instead of setuptools' import-hook
# finder, which imports pathlib, re and importlib.util at every Python start (~10 ms of each
# flanneld's start-up; an installed package has neither).
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' \
  --config-settings editable_mode=compat
# An editable install leaves compiling to the first import, which PYTHONDONTWRITEBYTECODE
# turns into a compile at every start (0.15 s of each flanneld's start-up): compile now.
.venv/bin/python -m compileall -q flanneld backends subnet cni >/dev/null
echo "install.sh: ready (.venv/bin/flanneld, .venv/bin/flannelctl, .venv/bin/flannel)"
