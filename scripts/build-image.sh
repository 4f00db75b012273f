#!/usr/bin/env bash
# Build the pyflannel image (manifests/Containerfile) as localhost/pyflannel:dev, offline
# if need be, as root:
#
#   bash scripts/build-image.sh [TAG]
#
# The base is BASE (default: the Containerfile's python:3.11-slim from a registry).  When it
# cannot be pulled, a Debian bookworm base is made with mmdebstrap (python3, iproute2,
# nftables, iptables, wireguard-go) and imported as localhost/pyflannel-base:<hash of its
# package list>; it stays in podman's storage, so the next build reuses it.  The Python
# dependencies are built into wheels on this machine (kept in /var/cache/pyflannel per
# pyproject.toml) and given to the build, so the build itself needs no package index;
# podman's layer cache keeps the dependency layer until pyproject.toml changes.
# Prints the image's size at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${1:-localhost/pyflannel:dev}
REGISTRY_BASE=docker.io/library/python:3.11-slim
BASE=${BASE:-$REGISTRY_BASE}
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,iproute2,nftables,iptables,wireguard-go,ca-certificates
# podman's default runtime (crun 1.8) refuses hybrid cgroup hierarchies; runc runs on both.
PODMAN=(podman --runtime runc)
PULL_TIMEOUT=${PULL_TIMEOUT:-60}
WHEEL_CACHE=${WHEEL_CACHE:-/var/cache/pyflannel}

if [ "$(id -u)" -ne 0 ]; then
  echo "build-image.sh: run as root (podman's root storage)" >&2
  exit 1
fi
for tool in podman runc mmdebstrap openssl; do
  if ! command -v "$tool" >/dev/null || [ ! -x .venv/bin/python ]; then
    bash scripts/install.sh --image >&2  # a fresh machine: the packages and .venv first
    break
  fi
done

debian_base() {
  local key tag tarball
  key=$(printf '%s %s' "$SUITE" "$BASE_PACKAGES" | sha256sum | cut -c1-12)
  tag=localhost/pyflannel-base:$SUITE-$key
  if "${PODMAN[@]}" image exists "$tag"; then
    echo "build-image.sh: reusing base $tag" >&2
  else
    echo "build-image.sh: making base $tag with mmdebstrap ($BASE_PACKAGES)" >&2
    tarball=$(mktemp --suffix=.tar /var/tmp/pyflannel-base.XXXXXX)
    trap 'rm -f "$tarball"' RETURN
    mmdebstrap --quiet --variant=essential --include="$BASE_PACKAGES" \
      --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      "$SUITE" "$tarball" >&2
    "${PODMAN[@]}" import --quiet \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["/bin/sh"]' "$tarball" "$tag" >/dev/null
  fi
  echo "$tag"
}

mkdir -p "$WHEEL_CACHE"

if "${PODMAN[@]}" image exists "$BASE" \
   || timeout "$PULL_TIMEOUT" "${PODMAN[@]}" pull --quiet "$BASE" >/dev/null 2>&1; then
  base=$BASE
else
  echo "build-image.sh: cannot pull $BASE; building a Debian base instead" >&2
  base=$(debian_base)
fi

# Wheels for everything pip installs in the image (and setuptools for the build backend),
# made with this machine's pip and its configured indexes; kept per pyproject.toml.
python=.venv/bin/python
[ -x "$python" ] || python=python3
wheels=$WHEEL_CACHE/wheels-$(sha256sum pyproject.toml | cut -c1-12)
if [ ! -d "$wheels" ]; then
  echo "build-image.sh: building wheels into $wheels" >&2
  fresh=$(mktemp -d "$WHEEL_CACHE/.wheels.XXXXXX")
  if ! { "$python" -m pip wheel --disable-pip-version-check --wheel-dir "$fresh" . \
         && "$python" -m pip download --disable-pip-version-check --dest "$fresh" \
              'setuptools>=68' wheel; } >"$fresh.log" 2>&1; then
    tail -n 30 "$fresh.log" >&2
    rm -rf "$fresh" "$fresh.log"
    echo "build-image.sh: building the wheels failed" >&2
    exit 1
  fi
  rm -f "$fresh"/pyflannel-*.whl "$fresh.log"  # the image builds pyflannel from the sources
  mv -T "$fresh" "$wheels" 2>/dev/null || rm -rf "$fresh"  # another build may have won
fi

echo "build-image.sh: building $TAG on $base" >&2
"${PODMAN[@]}" build --quiet --file manifests/Containerfile --tag "$TAG" \
  --build-arg BASE="$base" \
  --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels \
  --volume "$wheels:/wheels:ro" --network host \
  . >/dev/null
size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$TAG")
echo "build-image.sh: $TAG is $((size / 1000000)) MB"
