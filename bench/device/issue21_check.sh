#!/usr/bin/env bash
# Issue 21's device check (scale), one call of the `run` tool, about 8 minutes (see
# bench/device/README.md for .device/):
#
#   run(carry=[".device"], timeout_s=600, command="bash bench/device/issue21_check.sh")
#
# 1. The sampler's scaling curve: Reach, 10 envs per worker, 1..16 workers, the workload
#    sized to the slots (2 episodes per slot), 2 rounds per point
#    (`bench.bench_sampler --scaling`): sampler/raw and sampler/linear at each point.
# 2. Worker memory against envs per worker, with and without visual meshes
#    (`bench.bench_worker_memory`).
# 3. One meta-update on the GPU against the CPU (`bench.bench_optim --quick`), both devices.
# Everything comes back as $OUT/issue21.tar.gz (JSON + PNG + logs); each part runs under
# `timeout`, so a slow part costs its own figures only.
set -u
source bench/device/setup.sh || exit 1
export PYTHONUNBUFFERED=1
work=/tmp/issue21
mkdir -p "$work"
SECONDS=0
timeout -s KILL 300 python3 -m bench.bench_sampler --scaling --envs-per-worker 10 \
    --rounds 2 --out "$work/sampler" >"$work/sampler.log" 2>&1
timeout -s KILL 90 python3 -m bench.bench_worker_memory --families reach locomotion \
    --out "$work/memory" >"$work/memory.log" 2>&1
timeout -s KILL 60 python3 -m bench.bench_optim --device cuda --quick \
    --out "$work/optim" >"$work/optim-cuda.log" 2>&1
timeout -s KILL 60 python3 -m bench.bench_optim --device cpu --quick \
    --out "$work/optim" >"$work/optim-cpu.log" 2>&1
echo "all done after ${SECONDS}s"
tail -n 6 "$work"/*.log
tar czf "$OUT/issue21.tar.gz" -C /tmp issue21
ls -la "$OUT"
