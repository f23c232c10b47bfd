#!/usr/bin/env bash
# Install what .device/ carries ON THE DEVICE machine (GPU, Python 3.12, no internet), from
# the repo root, as the first part of a `run` command with carry [".device"]:
#
#     source bench/device/setup.sh && python3 -m bench.bench_optim --device cuda --out $OUT
#
# Sourced, it exports PYTHONPATH=/tmp/site:$PWD for the commands after it (the repo is
# used from its root, not installed: `python3 -m metarobot.cli ...`, not `metarobot ...`).
# Run with `bash bench/device/setup.sh` instead, prefix later commands with
# PYTHONPATH=/tmp/site:$PWD yourself.
#
# .device/ is made HERE by bench/device/prepare.sh. Into /tmp/site go: the wheels of
# .device/whl; pybullet (.device/pybullet-wheel if it imports there, else built from
# .device/pybullet-src with 2 x cores compile threads, log /tmp/pybullet-build.log); the
# trimmed pybullet_data. Then it imports everything and steps every task family
# (bench/device/smoke_envs.py), prints one summary line, and fails (nonzero) on any error.
# A second call on a still-warm machine reuses /tmp/site.
#
# Environment: DEVICE_DIR=.device  DEVICE_SITE=/tmp/site  PYTHON=python3
#              DEVICE_BUILD=1 (build pybullet from source even if the wheel imports)
#              PYBULLET_BUILD_JOBS=N (compile threads of that build; default 2 x cores)

_device_setup() (
    set -euo pipefail
    t0=$(date +%s)
    D=${DEVICE_DIR:-.device}
    [ -d "$D" ] && D=$(cd "$D" && pwd)
    SITE=${DEVICE_SITE:-/tmp/site}
    PYTHON=${PYTHON:-python3}
    fail() { echo "device-setup: FAILED: $*" >&2; exit 1; }
    [ -f metarobot/__init__.py ] || fail "run it from the repo root"
    [ -d "$D/whl" ] || fail "no $D/whl: run bench/device/prepare.sh here, carry [\"$D\"]"
    pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [ "$pyver" = 3.12 ] || echo "device-setup: warning: $PYTHON is $pyver, .device is for 3.12"
    export PIP_ROOT_USER_ACTION=ignore  # the device runs commands as root
    pipi() {
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --disable-pip-version-check "$@"
    }
    mkdir -p "$SITE"
    pipi --target "$SITE" "$D"/whl/*.whl || fail "pip install of $D/whl"

    # pybullet: already there (warm machine), the wheel built by prepare.sh, or a build.
    imports() { PYTHONPATH="$SITE" "$PYTHON" -c 'import pybullet' >/dev/null 2>&1; }
    drop() { rm -rf "$SITE"/pybullet*.so "$SITE"/pybullet-*.dist-info; }
    how=""
    if [ "${DEVICE_BUILD:-0}" = 1 ]; then
        drop
    elif imports; then
        how="already in $SITE"
    else
        drop
        whl=$(ls "$D"/pybullet-wheel/pybullet-*.whl 2>/dev/null | head -1 || true)
        if [ -n "$whl" ]; then
            if pipi --target "$SITE" "$whl" && imports; then
                how="prebuilt wheel"
            else
                echo "device-setup: the prebuilt pybullet does not import here; building it"
                drop
            fi
        fi
    fi
    if [ -z "$how" ]; then
        [ -f "$D/pybullet-src/setup.py" ] || fail "no $D/pybullet-src to build pybullet from"
        tb=$(date +%s)
        bt=/tmp/device-buildtools src=/tmp/pybullet-src out=/tmp/pybullet-wheel
        rm -rf "$bt" "$src" "$out"
        pipi --target "$bt" "$D"/buildtools/*.whl || fail "pip install of $D/buildtools"
        cp -r "$D/pybullet-src" "$src"
        inc=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
        cpath=""
        if [ ! -f "$inc/Python.h" ]; then  # no python3-dev: use the carried headers
            cpath=$(ls -d "$D"/python-include/python3* 2>/dev/null | head -1 || true)
            [ -n "$cpath" ] || fail "$PYTHON has no Python.h and $D/python-include is empty"
        fi
        jobs=${PYBULLET_BUILD_JOBS:-$((2 * $(nproc)))}
        echo "device-setup: building pybullet with $jobs threads (log /tmp/pybullet-build.log)"
        if ! (cd "$src" && env ${cpath:+CPATH=$cpath} PYTHONPATH="$bt" \
                PYBULLET_BUILD_JOBS="$jobs" CFLAGS=-g0 CXXFLAGS=-g0 "$PYTHON" -m pip wheel -v \
                --no-build-isolation --no-deps --no-index --disable-pip-version-check \
                -w "$out" . >/tmp/pybullet-build.log 2>&1); then
            grep -E "error|Error" /tmp/pybullet-build.log | head -20 >&2 || true
            tail -20 /tmp/pybullet-build.log >&2
            fail "pybullet build (log /tmp/pybullet-build.log)"
        fi
        pipi --target "$SITE" "$out"/pybullet-*.whl || fail "pip install of the built pybullet"
        imports || fail "the pybullet built here does not import"
        how="built from source in $(( $(date +%s) - tb )) s"
    fi

    # The trimmed data, importable as pybullet_data (its getDataPath() is its folder).
    rm -rf "$SITE/pybullet_data"
    cp -r "$D/pybullet_data" "$SITE/pybullet_data"

    export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    res=$("$PYTHON" - <<'EOF' 2>&1
import importlib.metadata as md
# torch first: on the lent H200 machine (2026-12-04) importing torch after pybullet died
# inside torch's import (segfault); the other order works.
try:
    import torch
    t = f"torch {torch.__version__} (cuda {torch.cuda.is_available()})"
except Exception as err:
    t = f"torch missing ({err})"
import pybullet, gymnasium, stable_baselines3, pybullet_data, sim_envs, metarobot, deploy  # noqa
print(f"{t}, pybullet {md.version('pybullet')}, gymnasium {gymnasium.__version__}, "
      f"sb3 {stable_baselines3.__version__}, numpy {md.version('numpy')}")
EOF
) || fail "imports: $res"
    versions=$(echo "$res" | tail -1)  # (pybullet prints its build time first)
    smoke=$("$PYTHON" bench/device/smoke_envs.py --steps 3 2>&1 | tail -1) \
        || fail "smoke_envs: $smoke"
    echo "device-setup: ok in $(( $(date +%s) - t0 )) s: python $pyver, $versions; pybullet" \
        "$how; ${smoke#smoke_envs: }"
)

if _device_setup; then
    export PYTHONPATH="${DEVICE_SITE:-/tmp/site}:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    # sourced: return to the caller (so `source ... && next` stops); run: exit
    return 1 2>/dev/null || exit 1
fi
