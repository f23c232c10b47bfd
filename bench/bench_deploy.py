"""Deploy benchmark: policy latency, adapt step, runtime memory, 100 Hz loop while adapting.

A Reach-shaped bundle (``O = 21``, ``A = 3``, hidden 64x64, the default config; random
parameters: speed does not depend on their values) is exported to a temporary directory,
then measured with onnxruntime on the CPU, one intra-op thread, sequential execution:

* **policy forward, batch 1** (µs, p50/p99): ``InferenceSession.run`` of ``policy.onnx``
  with preallocated float32 inputs (obs and the flat params). Also ``AdaptivePolicy.act``
  (validation, sampling, clipping, log-prob included).
* **adapt step, N = 1000** (ms, p50/p99): one ``adapt.onnx`` run on 1000 transitions; also
  a full ``AdaptivePolicy.adapt()`` on 20 episodes x 50 steps (advantages, graph, safety).
* **peak RSS** (MB): ``ru_maxrss`` (and VmHWM) of a fresh subprocess that imports the
  runtime (numpy + onnxruntime, torch blocked), loads the bundle, acts 1000 times and
  adapts 5 times; the same with ``import torch`` first, for comparison.
* **100 Hz control loop** (``run_control_loop`` + ``GymController`` on ``sim_envs/Reach-v0``):
  missed deadlines (a) without adaptation (the machine's own baseline), (b) with an
  ``adapt_async`` started at every episode end, (c) with the adaptation worker kept busy
  all the time on 1000 transitions. Plus the longest stall of a busy loop reading the
  clock for 2 s: on a shared VM the host deschedules the guest for milliseconds, which no
  runtime can hide.
* **bundle size** (files and total bytes).
* **RL2's memory bundle** beside it: a GRU policy of the same widths (one tanh layer of 64,
  a GRU of 64; ``adaptation: "memory"``, no adapt graph): ``policy.onnx`` forward at batch
  1 (obs, previous action, reward, episode end and the hidden state in; mean, log-std and
  the new state out), ``RecurrentPolicy.act`` (the state safety check included), its
  peak RSS (act and observe 1000 times, torch blocked) and its bundle size.

Targets: policy p99 <= 20 µs, adapt step (N = 1000) <= 1 ms, runtime peak RSS <= 80 MB,
zero missed deadlines at 100 Hz.

Usage::

    python -m bench.bench_deploy            # about two minutes
    python -m bench.bench_deploy --quick    # fewer repetitions, shorter loops

Writes ``bench/results/deploy/bench_deploy.json`` and ``bench_deploy.png``.
"""

from __future__ import annotations

import os

# One BLAS thread, set before numpy loads: the adaptation's small solves gain nothing from
# more, and OpenBLAS threads spinning on the second core starve the control thread.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import datetime
import json
import math
import platform
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np

from bench.common import REPO, command_line

OUT_DIR = REPO / "bench" / "results" / "deploy"
TARGETS = {"policy_p99_us": 20.0, "adapt_n1000_p50_ms": 1.0, "runtime_rss_mb": 80.0,
           "missed_deadlines": 0}
OBS_DIM, ACT_DIM, HIDDEN = 21, 3, (64, 64)


def export_reach_bundle(out: Path, recurrent: bool = False) -> Path:
    """A freshly initialised Reach bundle: the 64x64 MLP with its adapt graphs, or with
    ``recurrent`` RL2's memory bundle of the same widths (a tanh layer of 64, a GRU of 64)."""
    import gymnasium
    import torch

    from metarobot.core.policy import GaussianMLPPolicy
    from metarobot.core.recurrent import GaussianGRUPolicy
    from metarobot.export.bundle import export_bundle

    torch.manual_seed(0)
    model = (GaussianGRUPolicy if recurrent else GaussianMLPPolicy)(OBS_DIM, ACT_DIM, HIDDEN)
    params = {k: v.detach() for k, v in model.init_params().items()}
    inner = None if recurrent else {"loss": "lvc", "lr": 0.1, "clip": math.inf, "steps": 1,
                                    "gamma": 0.99, "lam": 1.0, "baseline": "linear_feature"}
    return export_bundle(
        model.eval(), params, out, family="reach", env_id="sim_envs/Reach-v0",
        observation_space=gymnasium.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32),
        action_space=gymnasium.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32),
        inner_config=inner)


def timed(fn, repeats: int, warmup: int = 100) -> np.ndarray:
    """Per-call wall times (s) of ``fn()``."""
    for _ in range(warmup):
        fn()
    out = np.empty(repeats)
    clock = time.perf_counter_ns
    for i in range(repeats):
        start = clock()
        fn()
        out[i] = clock() - start
    return out * 1e-9


def fill_episodes(policy, episodes: int, length: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(episodes):
        for t in range(length):
            obs = rng.standard_normal(policy.obs_dim).astype(np.float32)
            action = policy.act(obs)
            policy.observe(obs, action, float(obs[0] - action @ action), False, t == length - 1)


RSS_SCRIPT = textwrap.dedent("""
    import importlib.abc, resource, sys
    bundle, mode = sys.argv[1], sys.argv[2]
    if mode == "torch":
        import torch  # noqa: F401
    else:
        class BlockTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "torch":
                    raise ImportError("torch blocked")
        sys.meta_path.insert(0, BlockTorch())
    import numpy as np
    rng = np.random.default_rng(0)
    if sys.argv[3] == "memory":
        from deploy.recurrent import RecurrentPolicy
        policy = RecurrentPolicy.load(bundle, seed=0)
        for t in range(1000):
            obs = rng.standard_normal(policy.obs_dim).astype(np.float32)
            a = policy.act(obs)
            policy.observe(obs, a, float(obs[0]), False, t % 50 == 49)
    else:
        from deploy import AdaptivePolicy
        policy = AdaptivePolicy.load(bundle, seed=0)
    for i in range(5 if sys.argv[3] == "gradient" else 0):
        for e in range(4):
            for t in range(50):
                obs = rng.standard_normal(policy.obs_dim).astype(np.float32)
                a = policy.act(obs)
                policy.observe(obs, a, float(obs[0]), False, t == 49)
        policy.adapt(1)
    policy.close()
    torch_loaded = any(m.split(".")[0] == "torch" for m in sys.modules)
    with open("/proc/self/status") as f:
        hwm = next(line.split()[1] for line in f if line.startswith("VmHWM"))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, hwm, int(torch_loaded))
""")


def peak_rss_mb(bundle: Path, mode: str, kind: str = "gradient") -> tuple[float, float, bool]:
    """(ru_maxrss MB, VmHWM MB, torch imported) of a fresh runtime process.

    Linux carries ru_maxrss across fork + exec, so a child forked straight from this
    (large, torch-importing) process would report this process's size; the child is
    therefore forked from a small ``sh``. VmHWM (the peak of the exec'd image only) is a
    cross-check.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-c",
                           RSS_SCRIPT, str(bundle), mode, kind], env=env, capture_output=True,
                          text=True, check=True, cwd=REPO)
    maxrss_kb, hwm_kb, torch_loaded = proc.stdout.split()
    return int(maxrss_kb) / 1024.0, int(hwm_kb) / 1024.0, bool(int(torch_loaded))


def scheduler_stall_ms(seconds: float = 2.0) -> float:
    """Longest gap (ms) between consecutive clock reads in a busy loop of ``seconds``."""
    clock = time.perf_counter
    end = clock() + seconds
    last = worst = 0.0
    now = clock()
    while now < end:
        last, now = now, clock()
        worst = max(worst, now - last)
    return worst * 1e3


def control_loop(bundle: Path, steps: int, mode: str) -> dict:
    import gymnasium

    import sim_envs  # noqa: F401
    from deploy import AdaptivePolicy, GymController, SafetyConfig, run_control_loop

    # "busy": every adaptation is rejected (max_kl tiny), so the 20 recorded episodes stay
    # and each adaptation runs on 1000 transitions, back to back, all loop long.
    stress = mode == "busy"
    safety = SafetyConfig(max_kl=1e-12) if stress else SafetyConfig()
    policy = AdaptivePolicy.load(bundle, seed=0, safety=safety, max_episodes=20)
    env = gymnasium.make("sim_envs/Reach-v0")
    reports, stop = [], threading.Event()
    if stress:
        fill_episodes(policy, 20, 50)

        def keep_adapting() -> None:
            while not stop.is_set():
                reports.append(policy.adapt_async(1).result())

        worker = threading.Thread(target=keep_adapting)
        worker.start()
        on_end = None
    elif mode == "none":
        on_end = None
    else:
        futures = []

        def on_end(index: int, ret: float) -> None:
            futures.append(policy.adapt_async(1))

    try:
        loop = run_control_loop(GymController(env, seed=0), policy, 100.0, steps,
                                on_episode_end=on_end)
    finally:
        stop.set()
        if stress:
            worker.join()
    if mode == "episode_end":
        reports = [f.result() for f in futures]
    policy.close()
    env.close()
    return {"steps": loop.steps, "rate_hz": loop.rate_hz,
            "missed_deadlines": loop.missed_deadlines,
            "step_time_p50_ms": loop.step_time_p50 * 1e3,
            "step_time_p99_ms": loop.step_time_p99 * 1e3,
            "step_time_max_ms": loop.step_time_max * 1e3,
            "start_lateness_max_ms": loop.start_lateness_max * 1e3, "wall_s": loop.wall_time,
            "adaptations": len(reports), "accepted": sum(r.accepted for r in reports),
            "adapt_transitions_max": max((r.transitions for r in reports), default=0),
            "adapt_seconds_p50_ms": float(np.median([r.seconds for r in reports]) * 1e3)
            if reports else None}


def measure_recurrent(out: Path, repeats: int) -> dict:
    """RL2's memory bundle: forward and act latency at batch 1, peak RSS, size."""
    from deploy.bundle import open_session
    from deploy.recurrent import RecurrentPolicy

    bundle = export_reach_bundle(out, recurrent=True)
    files = {p.name: p.stat().st_size for p in sorted(bundle.iterdir())}
    policy = RecurrentPolicy.load(bundle, seed=0)
    session = open_session(policy.bundle.policy_file, threads=1)
    feeds = {"obs": np.zeros((1, OBS_DIM), np.float32),
             "prev_action": np.zeros((1, ACT_DIM), np.float32),
             "prev_reward": np.zeros(1, np.float32), "prev_done": np.zeros(1, np.float32),
             "h_in": np.zeros((1, policy.hidden_size), np.float32)}
    fwd = timed(lambda: session.run(None, feeds), repeats)
    obs = np.random.default_rng(0).standard_normal(OBS_DIM).astype(np.float32)
    act = timed(lambda: policy.act(obs), repeats)
    rss, hwm, torch_in = peak_rss_mb(bundle, "runtime", "memory")
    return {"bundle": {"hidden": list(HIDDEN), "hidden_size": policy.hidden_size,
                       "params": policy.bundle.layout.size, "files": files,
                       "total_bytes": sum(files.values())},
            "policy_forward_us": {"p50": np.percentile(fwd, 50) * 1e6,
                                  "p99": np.percentile(fwd, 99) * 1e6,
                                  "mean": fwd.mean() * 1e6, "repeats": repeats},
            "act_us": {"p50": np.percentile(act, 50) * 1e6, "p99": np.percentile(act, 99) * 1e6},
            "peak_rss_mb": {"runtime": rss, "runtime_vmhwm": hwm,
                            "runtime_imported_torch": torch_in},
            "state_resets": policy.state_resets}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    repeats = 5000 if args.quick else 50000
    adapt_repeats = 100 if args.quick else 500
    loop_steps = 500 if args.quick else 2000

    import onnxruntime as ort

    from deploy import AdaptivePolicy
    from deploy.bundle import open_session

    tmp = Path(tempfile.mkdtemp(prefix="bench_deploy_"))
    bundle = export_reach_bundle(tmp / "bundle")
    results: dict = {"bundle": {"obs_dim": OBS_DIM, "act_dim": ACT_DIM, "hidden": list(HIDDEN)}}
    files = {p.name: p.stat().st_size for p in sorted(bundle.iterdir())}
    results["bundle"].update(files=files, total_bytes=sum(files.values()))

    # Policy forward, batch 1, preallocated inputs.
    policy = AdaptivePolicy.load(bundle, seed=0)
    results["bundle"]["params"] = policy.bundle.layout.size
    session = open_session(policy.bundle.policy_file, threads=1)
    feeds = {"obs": np.zeros((1, OBS_DIM), np.float32), "params": policy.params.copy()}
    fwd = timed(lambda: session.run(None, feeds), repeats)
    obs = np.random.default_rng(0).standard_normal(OBS_DIM).astype(np.float32)
    act = timed(lambda: policy.act(obs), repeats)
    results["policy_forward_us"] = {"p50": np.percentile(fwd, 50) * 1e6,
                                    "p99": np.percentile(fwd, 99) * 1e6,
                                    "mean": fwd.mean() * 1e6, "repeats": repeats}
    results["act_us"] = {"p50": np.percentile(act, 50) * 1e6,
                         "p99": np.percentile(act, 99) * 1e6}

    # One adapt step on 1000 transitions: the graph alone, then the full adapt().
    rng = np.random.default_rng(1)
    n = 1000
    adapt_session = open_session(policy.bundle.adapt_files[1], threads=1)
    adapt_feeds = {"params": policy.params.copy(),
                   "obs": rng.standard_normal((n, OBS_DIM)).astype(np.float32),
                   "act": rng.standard_normal((n, ACT_DIM)).astype(np.float32),
                   "adv": rng.standard_normal(n).astype(np.float32),
                   "old_logp": np.full(n, -3.0, np.float32), "weight": np.ones(n, np.float32),
                   "lr": np.asarray(0.1, np.float32), "clip": np.asarray(np.inf, np.float32)}
    step = timed(lambda: adapt_session.run(None, adapt_feeds), adapt_repeats, warmup=10)
    full = []
    for _ in range(max(10, adapt_repeats // 20)):
        policy.reset_adaptation()
        fill_episodes(policy, 20, 50)
        full.append(policy.adapt(1).seconds)
    results["adapt_step_n1000_ms"] = {"p50": np.percentile(step, 50) * 1e3,
                                      "p99": np.percentile(step, 99) * 1e3,
                                      "repeats": adapt_repeats}
    results["adapt_full_n1000_ms"] = {"p50": float(np.median(full)) * 1e3,
                                      "max": float(np.max(full)) * 1e3, "repeats": len(full)}
    policy.close()

    rss, hwm, torch_in = peak_rss_mb(bundle, "runtime")
    rss_torch, hwm_torch, _ = peak_rss_mb(bundle, "torch")
    results["peak_rss_mb"] = {"runtime": rss, "runtime_vmhwm": hwm,
                              "runtime_imported_torch": torch_in,
                              "with_torch_imported": rss_torch,
                              "with_torch_imported_vmhwm": hwm_torch}

    results["recurrent"] = measure_recurrent(tmp / "recurrent", repeats)

    results["scheduler_stall_ms"] = scheduler_stall_ms()
    results["control_loop_100hz"] = {
        "no_adaptation": control_loop(bundle, loop_steps, "none"),
        "adapt_at_episode_end": control_loop(bundle, loop_steps, "episode_end"),
        "adapt_worker_always_busy": control_loop(bundle, loop_steps, "busy")}

    missed = max(v["missed_deadlines"] for v in results["control_loop_100hz"].values())
    results["targets"] = TARGETS
    results["meets_targets"] = {
        "policy_p99_us": results["policy_forward_us"]["p99"] <= TARGETS["policy_p99_us"],
        "adapt_n1000_p50_ms": results["adapt_step_n1000_ms"]["p50"]
        <= TARGETS["adapt_n1000_p50_ms"],
        "runtime_rss_mb": rss <= TARGETS["runtime_rss_mb"],
        "missed_deadlines": missed <= TARGETS["missed_deadlines"]}
    import onnx
    import torch
    results["hardware"] = {"cpu": cpu_model(), "cores": os.cpu_count(),
                           "ort_intra_op_threads": 1, "ort_execution_mode": "sequential",
                           "openblas_threads": os.environ["OPENBLAS_NUM_THREADS"],
                           "machine": platform.machine()}
    results["versions"] = {"python": platform.python_version(), "numpy": np.__version__,
                           "onnxruntime": ort.__version__, "onnx": onnx.__version__,
                           "torch": torch.__version__}
    results["command"] = command_line()
    results["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "bench_deploy.json").write_text(json.dumps(results, indent=1, default=float)
                                               + "\n")
    plot(fwd, act, step, results, OUT_DIR / "bench_deploy.png")
    report(results)


def plot(fwd: np.ndarray, act: np.ndarray, step: np.ndarray, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.logspace(np.log10(min(fwd.min(), act.min()) * 1e6 * 0.9),
                       np.log10(np.percentile(act, 99.9) * 1e6 * 1.1), 80)
    axes[0].hist(fwd * 1e6, bins=bins, alpha=0.7, label="policy.onnx run (batch 1)")
    axes[0].hist(act * 1e6, bins=bins, alpha=0.7, label="AdaptivePolicy.act")
    axes[0].axvline(TARGETS["policy_p99_us"], color="k", ls="--", label="target p99 (20 µs)")
    axes[0].set(xscale="log", yscale="log", xlabel="latency (µs)", ylabel="calls",
                title="Policy forward latency, 1 thread")
    axes[0].legend(fontsize=8)
    axes[1].hist(step * 1e3, bins=40, color="C2")
    axes[1].axvline(TARGETS["adapt_n1000_p50_ms"], color="k", ls="--", label="target (1 ms)")
    axes[1].set(xlabel="latency (ms)", ylabel="runs", title="adapt.onnx, N = 1000 transitions")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{results['hardware']['cpu']}, {results['hardware']['cores']} cores, "
                 f"onnxruntime {results['versions']['onnxruntime']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(r: dict) -> None:
    ok = r["meets_targets"]
    loops = r["control_loop_100hz"]
    rows = [
        ("policy forward B=1 p50 / p99", f"{r['policy_forward_us']['p50']:.1f} / "
         f"{r['policy_forward_us']['p99']:.1f} µs", "p99 <= 20 µs", ok["policy_p99_us"]),
        ("act() p50 / p99", f"{r['act_us']['p50']:.1f} / {r['act_us']['p99']:.1f} µs", "",
         None),
        ("adapt step N=1000 p50 / p99", f"{r['adapt_step_n1000_ms']['p50']:.3f} / "
         f"{r['adapt_step_n1000_ms']['p99']:.3f} ms", "<= 1 ms", ok["adapt_n1000_p50_ms"]),
        ("adapt() 20x50 steps p50", f"{r['adapt_full_n1000_ms']['p50']:.2f} ms", "", None),
        ("peak RSS runtime (no torch)", f"{r['peak_rss_mb']['runtime']:.1f} MB", "<= 80 MB",
         ok["runtime_rss_mb"]),
        ("peak RSS with torch imported", f"{r['peak_rss_mb']['with_torch_imported']:.1f} MB",
         "", None),
    ]
    for name, loop in loops.items():
        rows.append((f"100 Hz loop, {name}",
                     f"{loop['missed_deadlines']} missed / {loop['steps']}, "
                     f"step p99 {loop['step_time_p99_ms']:.2f} ms, late start max "
                     f"{loop['start_lateness_max_ms']:.1f} ms, {loop['adaptations']} adapts",
                     "0 missed", loop["missed_deadlines"] == 0))
    rec = r["recurrent"]
    rows += [
        ("RL2 GRU policy forward B=1 p50 / p99", f"{rec['policy_forward_us']['p50']:.1f} / "
         f"{rec['policy_forward_us']['p99']:.1f} µs", "", None),
        ("RL2 RecurrentPolicy.act p50 / p99", f"{rec['act_us']['p50']:.1f} / "
         f"{rec['act_us']['p99']:.1f} µs", "", None),
        ("RL2 peak RSS runtime (no torch)", f"{rec['peak_rss_mb']['runtime']:.1f} MB", "",
         None),
        ("RL2 bundle size", f"{rec['bundle']['total_bytes'] / 1024:.0f} KiB "
         f"(P = {rec['bundle']['params']})", "", None)]
    rows.append(("longest stall of a busy loop (2 s)", f"{r['scheduler_stall_ms']:.2f} ms", "",
                 None))
    rows.append(("bundle size", f"{r['bundle']['total_bytes'] / 1024:.0f} KiB "
                 f"(P = {r['bundle']['params']})", "", None))
    print(f"{'measure':<38} {'value':<52} {'target':<14} ok")
    for name, value, target, passed in rows:
        print(f"{name:<38} {value:<52} {target:<14} {'' if passed is None else passed}")
    print(f"\n{r['hardware']['cpu']}, {r['hardware']['cores']} cores, 1 ORT thread; "
          f"results in {OUT_DIR.relative_to(REPO)}")


if __name__ == "__main__":
    main()
