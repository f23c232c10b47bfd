#!/usr/bin/env bash
# Issue 18's device check, one call of the `run` tool (about 9 minutes; see
# bench/device/README.md for .device/):
#
#   run(carry=[".device"], timeout_s=600, command="bash bench/device/issue18_check.sh")
#
# On the 16 cores, side by side, each stopped inside T seconds:
#   * SB3 PPO learnability on the new locomotion family (bench/locomotion_learnability.py),
#     without and with the gait generator, 6 envs each, evaluated every chunk;
#   * meta-training locomotion-cpu seed 0 (2 sampler workers as on the 2-core machine,
#     meta-update on the GPU), stopped by SIGTERM (the trainer checkpoints and stops).
# Everything comes back as $OUT/issue18.tar.gz: results JSON/PNG, SB3 models, run
# directories (resume them here with `metarobot train --resume`).
#
# First try (2026-12-04) came back empty: the SB3 chunks outlived T and the call hit the
# tool's 600 s limit before the tar. Every job now runs under `timeout`, and the raw env
# there ran at 9.7 ms per locomotion step (1.3 ms here): size the chunks for that.
set -u
T=${T:-500}
source bench/device/setup.sh || exit 1
export PYTHONUNBUFFERED=1
work=/tmp/issue18
mkdir -p "$work"
SECONDS=0
for variant in plain gait; do
    flag=""; [ "$variant" = gait ] && flag="--gait-generator"
    OMP_NUM_THREADS=1 timeout -s KILL "$T" python3 -m bench.locomotion_learnability \
        --steps 4000000 --chunk 100000 \
        --n-envs 6 $flag --time-limit $((T - 20)) --out "$work/learnability-$variant" \
        >"$work/learnability-$variant.log" 2>&1 &
done
OMP_NUM_THREADS=2 timeout -s TERM "$T" python3 -m metarobot.cli train --config locomotion-cpu \
    --set seed=0 --device cuda --run-dir "$work/meta-seed0" --no-progress \
    >"$work/meta-seed0.log" 2>&1 &
wait
echo "all done after ${SECONDS}s"
tail -n 12 "$work"/*.log
du -sh "$work"/*
tar czf "$OUT/issue18.tar.gz" -C /tmp issue18
ls -la "$OUT"
