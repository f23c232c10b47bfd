#!/usr/bin/env bash
# Prepare .device/ for the GPU device machine. Run HERE (internet, gcc), from anywhere:
#
#     bash bench/device/prepare.sh
#
# The device (x86-64, Python 3.12 with CUDA torch, no internet) lacks pybullet, gymnasium
# and stable-baselines3; everything else this repo imports is in its image (see
# /work/.library/device/KINDS.md). .device/ (git-ignored, carried by the `run` tool) gets:
#   whl/             cp312 wheels of the missing pure-Python packages (pinned below)
#   pybullet-wheel/  pybullet built HERE for cp312 (libstdc++ static) - setup.sh installs
#                    it if it imports there, else builds pybullet-src there
#   pybullet-src/    the pybullet sdist trimmed to what its build compiles (~19 MiB)
#   buildtools/      setuptools + wheel wheels for that fallback build
#   python-include/  Python 3.12 headers, in case the device's python has none
#   pybullet_data/   only the pybullet_data files sim_envs loads (an importable package)
# Then bench/device/setup.sh installs it all on the device (see bench/device/README.md).
#
# Environment:
#   PY=312            target CPython version (312 = the device; 311 to test here)
#   BUILD_WHEEL=1     build the pybullet wheel here (0: skip, the device builds from source;
#                     a wheel cached in $CACHE is reused unless REBUILD=1)
#   BUILD_PYTHON=...  a python $PY with headers for that build (default: python3.N on PATH or
#                     pyenv's); a venv with numpy/setuptools/wheel is made from it in $CACHE
#   JOBS=2            parallel compile jobs of that build (it runs under nice -n 19)
#   FALLBACK_SRC=1    0: leave out pybullet-src/, buildtools/, python-include/ (-25 MiB),
#                     when the device is known to import the prebuilt wheel
#   EXTRA="a==1 b==2" more wheels to carry (e.g. exact onnx/onnxruntime versions)
#   DEST=.device      output folder (relative to the repo root, or absolute for tests)
#   CACHE=~/.cache/metarobot-device   sdist, build venv, built wheels and build logs
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY=${PY:-312}
PYDOT="${PY:0:1}.${PY:1}"
DEST=${DEST:-.device}
CACHE=${CACHE:-$HOME/.cache/metarobot-device}
BUILD_WHEEL=${BUILD_WHEEL:-1}
FALLBACK_SRC=${FALLBACK_SRC:-1}
JOBS=${JOBS:-2}
PYBULLET_VERSION=3.2.7
# The repo's runtime dependencies that the device image lacks, pinned to the dev venv
# (pyproject's moviepy is imported nowhere; torch, numpy, onnx*, tensorboard, matplotlib,
# pyyaml, tqdm, cloudpickle, typing-extensions, imageio are in the image).
WHEELS=(gymnasium==1.4.0 Farama-Notifications==0.0.6 stable_baselines3==2.9.2 ${EXTRA:-})
BUILD_TOOLS=(setuptools==84.2.1 wheel==0.48.0)
NUMPY_BUILD=numpy==2.4.6   # headers for the pybullet build (NumPy 2 builds run on any 2.x)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)

log() { echo "[prepare] $*"; }
PIP_PY=${PIP_PY:-python3}   # any python with pip, for the downloads

# .device/ never goes into git (the run tool carries it as an ignored path).
if [[ "$DEST" != /* ]]; then
    exclude="$(git rev-parse --git-common-dir)/info/exclude"
    mkdir -p "$(dirname "$exclude")"
    grep -qxF "/$DEST/" "$exclude" 2>/dev/null || echo "/$DEST/" >>"$exclude"
fi
mkdir -p "$DEST" "$CACHE"

# Warn when the pins above drift from the dev venv.
if [ -x /tmp/venv/bin/pip ]; then
    frozen="$(/tmp/venv/bin/pip freeze 2>/dev/null | tr 'A-Z_' 'a-z-')"
    for pin in "${WHEELS[@]}"; do
        want="$(echo "$pin" | tr 'A-Z_' 'a-z-')"
        echo "$frozen" | grep -qxF "$want" || log "WARNING: /tmp/venv does not have $pin"
    done
fi

# 1. wheels (pure Python ones; --platform also accepts py3-none-any)
rm -rf "$DEST/whl" "$DEST/buildtools"
download() {
    local dest=$1; shift
    "$PIP_PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYDOT" \
        --implementation cp "${PLATFORMS[@]}" -d "$dest" "$@" 2>&1 \
        | grep -v "^WARNING: Location" || true
    local n; n=$(ls "$dest"/*.whl 2>/dev/null | wc -l)
    [ "$n" -eq "$#" ] || { log "ERROR: wanted $# wheels ($*) in $dest, got $n"; exit 1; }
}
download "$DEST/whl" "${WHEELS[@]}"
download "$DEST/buildtools" "${BUILD_TOOLS[@]}"
log "wheels: $(cd "$DEST/whl" && ls | tr '\n' ' ')"

# 2. pybullet sdist -> trimmed source and data
SDIST="$CACHE/pybullet-$PYBULLET_VERSION"
if [ ! -f "$SDIST/setup.py" ]; then
    "$PIP_PY" -m pip download -q --no-binary :all: --no-deps -d "$CACHE" \
        "pybullet==$PYBULLET_VERSION" 2>&1 | grep -v "^WARNING: Location" || true
    tar -xzf "$CACHE/pybullet-$PYBULLET_VERSION.tar.gz" -C "$CACHE"
fi

# The build python: any CPython $PYDOT with headers (pyenv's work).
if [ -z "${BUILD_PYTHON:-}" ]; then
    for cand in "python$PYDOT" "$HOME"/.pyenv/versions/"$PYDOT".*/bin/python3; do
        if "$cand" -c "import sys; assert sys.version_info[:2] == (${PY:0:1}, ${PY:1})" \
                >/dev/null 2>&1; then  # (a pyenv shim may exist and fail)
            BUILD_PYTHON=$(command -v "$cand"); break
        fi
    done
fi
# gcc -MM needs Python.h: the build python's (else the dev python's, same headers tree).
DEPS_PY=${BUILD_PYTHON:-python3}
nice -n 19 "$DEPS_PY" bench/device/pybullet_files.py src "$SDIST" "$DEST/pybullet-src"
python3 bench/device/pybullet_files.py data "$SDIST" "$DEST/pybullet_data"

# 3. Python headers for a fallback build on a device python without them
rm -rf "$DEST/python-include"
if [ -n "${BUILD_PYTHON:-}" ]; then
    inc="$("$BUILD_PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    if [ -f "$inc/Python.h" ]; then
        mkdir -p "$DEST/python-include" && cp -r "$inc" "$DEST/python-include/"
    fi
fi

# 4. pybullet wheel built here for cp$PY (the device then needs no compiler time)
rm -rf "$DEST/pybullet-wheel"
if [ "$BUILD_WHEEL" = 1 ]; then
    if [ -z "${BUILD_PYTHON:-}" ]; then
        log "no python$PYDOT here: skipping the pybullet wheel (the device builds from source)"
    else
        whl=$(ls "$CACHE"/pybullet-"$PYBULLET_VERSION"-cp"$PY"-*.whl 2>/dev/null | head -1 || true)
        if [ -z "$whl" ] || [ "${REBUILD:-0}" = 1 ]; then
            venv="$CACHE/build-py$PY"
            [ -x "$venv/bin/python" ] || "$BUILD_PYTHON" -m venv "$venv"
            "$venv/bin/python" -m pip install -q "$NUMPY_BUILD" "${BUILD_TOOLS[@]}" 2>&1 \
                | grep -v "^WARNING: Location" || true
            work="$(mktemp -d)"
            cp -r "$DEST/pybullet-src" "$work/src"
            log "building pybullet for cp$PY with $JOBS jobs under nice (4-5 min on 2 busy cores)"
            start=$(date +%s)
            if ! (cd "$work/src" && PYBULLET_BUILD_JOBS=$JOBS CFLAGS=-g0 CXXFLAGS=-g0 \
                    LDFLAGS="-static-libstdc++ -static-libgcc" nice -n 19 "$venv/bin/python" \
                    -m pip wheel -v --no-build-isolation --no-deps --no-index -w "$work/out" . \
                    >"$CACHE/build-py$PY.log" 2>&1); then
                tail -30 "$CACHE/build-py$PY.log"; log "ERROR: build failed"; exit 1
            fi
            log "pybullet built in $(( $(date +%s) - start )) s (log: $CACHE/build-py$PY.log)"
            rm -f "$CACHE"/pybullet-"$PYBULLET_VERSION"-cp"$PY"-*.whl
            cp "$work"/out/pybullet-*.whl "$CACHE/"
            rm -rf "$work"
            whl=$(ls "$CACHE"/pybullet-"$PYBULLET_VERSION"-cp"$PY"-*.whl | head -1)
        fi
        mkdir -p "$DEST/pybullet-wheel" && cp "$whl" "$DEST/pybullet-wheel/"
        glibc=$(python3 -c 'import re, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
so = [n for n in z.namelist() if n.endswith(".so")][0]
v = [int(x) for x in re.findall(rb"GLIBC_2\.(\d+)", z.read(so))]
print(f"2.{max(v)}" if v else "?")' "$whl")
        log "pybullet wheel: $(basename "$whl") (needs glibc $glibc or newer)"
    fi
fi

if [ "$FALLBACK_SRC" = 0 ]; then
    [ -d "$DEST/pybullet-wheel" ] || { log "ERROR: FALLBACK_SRC=0 needs BUILD_WHEEL=1"; exit 1; }
    rm -rf "$DEST/pybullet-src" "$DEST/buildtools" "$DEST/python-include"
fi

# 5. sizes: the run tool carries at most 64 MiB, the repo included
du -sh "$DEST"/* | sed 's/^/[prepare]   /'
total=$(du -sm --apparent-size "$DEST" | cut -f1)
log "total $DEST: ${total} MiB (repo tracked files travel too; limit 64 MiB)"
[ "$total" -lt 60 ] || { log "ERROR: $DEST is too large"; exit 1; }
log "done: carry [\"$DEST\"] and start the command with: source bench/device/setup.sh &&"
