#!/bin/sh
# The install steps of docker/spconv/Containerfile and docker/minkowski/Containerfile, one function each, so that
# a machine without a container engine runs exactly what a recipe runs:
#     PYTHON=python3 WHEELS=dir LOCK=file sh docker/steps.sh venv package minkowski smoke
# Variables (the Containerfiles set them):
#   FLAVOUR   cpu | cuda                          (default cpu)
#   STACK     spconv | minkowski                  (for smoke; default spconv)
#   VENV      where `venv` creates the environment (default /opt/venv)
#   PYTHON    the interpreter the later steps use  (default $VENV/bin/python)
#   WHEELS    a folder holding every wheel of LOCK (pip never asks an index)
#   LOCK      the hash-locked requirements file (pip --require-hashes)
#   SRC       a folder holding pyproject.toml, README.md and depthcontrast/ (for package)
#   MINKOWSKI_CACHE  the wheel cache of `python -m depthcontrast.minkowski_build` (for minkowski)
#   TORCH_CUDA_ARCH_LIST  CUDA architectures of the MinkowskiEngine build (default "8.0;9.0")
#   SMOKE_DEVICE  cpu | cuda for smoke (default: the flavour's device)
set -eu
FLAVOUR=${FLAVOUR:-cpu}
VENV=${VENV:-/opt/venv}
PYTHON=${PYTHON:-$VENV/bin/python}
TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0;9.0}
PIP_OFFLINE="--no-index --no-cache-dir --disable-pip-version-check"

say() { echo "[steps] $*"; }

# Debian/Ubuntu packages: the CPU base has them from mmdebstrap already; the CUDA base gets them from apt.
system() {
    packages="python3 python3-venv python3-dev g++ libopenblas-dev libusb-1.0-0 libgomp1"
    if python3 -c 'import ensurepip, os, sysconfig; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' \
        2>/dev/null && { [ -e /usr/include/x86_64-linux-gnu/cblas.h ] || [ -e /usr/include/cblas.h ]; }; then
        say "system packages present"
        return
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $packages
    rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log
}

venv() {
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    say "pip install --require-hashes -r $LOCK (wheels from $WHEELS)"
    # the lock's setuptools first: the few packages that come as an sdist are built with it, offline
    build_backend=/tmp/build-backend.txt
    awk '/^setuptools==/ {keep = 1} keep {print} keep && !/\\$/ {exit}' "$LOCK" > "$build_backend"
    "$PYTHON" -m pip install -q $PIP_OFFLINE --find-links "$WHEELS" --require-hashes --no-deps -r "$build_backend"
    rm -f "$build_backend"
    "$PYTHON" -m pip install -q $PIP_OFFLINE --find-links "$WHEELS" --require-hashes --no-deps --no-build-isolation --use-pep517 \
        -r "$LOCK"
}

# fixed folders, not mktemp: pip records where a package came from (direct_url.json), and that must not vary
package() {
    work=/tmp/depthcontrast-src
    rm -rf "$work" && mkdir -p "$work"
    cp -R "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/depthcontrast" "$work/"
    "$PYTHON" -m pip install -q $PIP_OFFLINE --no-deps --no-build-isolation "$work"
    rm -rf "$work"
}

minkowski() {
    # the repository's own MinkowskiEngine build step; a cached wheel with the same key is installed as it is
    cache=/tmp/minkowski-cache
    rm -rf "$cache" && mkdir -p "$cache"
    if [ -n "${MINKOWSKI_CACHE:-}" ] && [ -d "$MINKOWSKI_CACHE" ]; then cp -R "$MINKOWSKI_CACHE/." "$cache/"; fi
    "$PYTHON" -m depthcontrast.minkowski_build "--$FLAVOUR" --arch-list "$TORCH_CUDA_ARCH_LIST" --cache "$cache" --install
    rm -rf "$cache"
}

smoke() {
    # a CUDA image is built without a GPU: its build checks imports only ("import"); run it with --nv for "cuda"
    if [ "$FLAVOUR" = cuda ]; then device=${SMOKE_DEVICE:-cuda}; else device=${SMOKE_DEVICE:-cpu}; fi
    "$PYTHON" -m depthcontrast.containers.smoke --stack "${STACK:-spconv}" --device "$device"
}

# drop what the steps leave behind (only their own folders: safe outside a container too)
clean() {
    rm -rf /root/.cache/pip /tmp/depthcontrast-src /tmp/minkowski-cache /tmp/build-backend.txt "$VENV"/share/man
}

[ $# -gt 0 ] || { echo "usage: sh docker/steps.sh STEP... (system venv package minkowski smoke clean)" >&2; exit 2; }
for step in "$@"; do
    case "$step" in
        system|venv|package|minkowski|smoke|clean) say "step $step"; "$step" ;;
        *) echo "docker/steps.sh: unknown step '$step' (system venv package minkowski smoke clean)" >&2; exit 2 ;;
    esac
done
