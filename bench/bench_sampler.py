"""Sampler benchmark: MultiTaskSampler throughput against the raw throughput of its workers.

One sampler (``--workers`` processes x ``--envs-per-worker`` envs) is measured in one run,
alternating in ``--rounds`` rounds between:

* **sampler**: one full ``sample`` call of ``--tasks`` tasks x ``--episodes`` episodes with
  a 64x64 Gaussian MLP policy (per-task parameters, the trainer's case), env steps / wall
  time of the call (startup excluded, task setting and resets included);
* **raw**: the same workers stepping the same envs with uniform random actions, no policy
  and no IPC per step (``MultiTaskSampler.measure_raw_throughput``), as many steps per env
  as one sample call takes per slot, all workers at once.

Each round runs raw, sampler, sampler, raw (so a drift of the machine's load within a
round cancels) and its ratio is the sampler's rate over the raw rate of that round. The
ratio sampler / raw is the fraction of the workers' env throughput the sampler keeps
(target >= 0.8); the median over rounds is reported, with the spread (the machine may be
shared and noisy). Also reported: time per sample call and its split per step into the
policy (one batched ``vmap`` call over all running slots), the workers (envs + IPC) and the
rest of the main process; and the policy time per step when all tasks share parameters
(pre-update sampling: one plain call).

Usage::

    python bench/bench_sampler.py             # Reach, 10 tasks x 10 episodes, 2 workers
    python bench/bench_sampler.py --quick

Writes ``bench/results/sampler/bench_sampler.json`` and ``bench_sampler.png``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from metarobot.policy import GaussianMLPPolicy  # noqa: E402
from metarobot.sampler import MultiTaskSampler  # noqa: E402
from sim_envs.registry import make_family  # noqa: E402

OUT_DIR = REPO / "bench" / "results" / "sampler"
TARGET_SAMPLER_OVER_RAW = 0.8


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    return {
        "hostname": socket.gethostname(), "cpu_model": cpu, "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "platform": platform.platform(),
        "versions": {name: importlib.metadata.version(name)
                     for name in ("torch", "pybullet", "gymnasium", "numpy")},
        "git_commit": commit,
    }


def family_of(env_id: str) -> str:
    from sim_envs.registry import ENV_IDS

    for name, gym_id in ENV_IDS.items():
        if gym_id == env_id:
            return name
    raise ValueError(f"{env_id!r} is not a sim_envs family id; known: {list(ENV_IDS.values())}")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    family = make_family(family_of(args.env))
    tasks = family.sample_tasks(args.tasks, "train", seed=0)
    rounds: list[dict[str, float]] = []
    with MultiTaskSampler(args.env, args.workers, args.envs_per_worker,
                          device=args.device) as sampler:
        model = GaussianMLPPolicy(sampler.obs_dim, sampler.act_dim).to(args.device)
        params = {k: v.detach().expand(args.tasks, *v.shape).clone()
                  for k, v in model.named_parameters()}
        generator = torch.Generator(device=args.device).manual_seed(0)
        env_steps_per_call = args.tasks * args.episodes * sampler.max_episode_steps
        raw_steps_per_env = max(1, env_steps_per_call // sampler.num_slots)

        # Warm-up: first set_task on every env, first vmap trace, page-in.
        sampler.sample(model, params, tasks, args.episodes, seed=0, generator=generator)
        sampler.measure_raw_throughput(min(raw_steps_per_env, 50), seed=0)
        def sample(call_params: dict[str, torch.Tensor], seed: int) -> dict[str, float]:
            start = time.perf_counter()
            batch = sampler.sample(model, call_params, tasks, args.episodes, seed=seed,
                                   generator=generator)
            stats = dict(sampler.last_stats, wall_s=time.perf_counter() - start)
            stats["env_steps"] = float(batch.mask.sum())
            return stats

        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds} ...", flush=True)
            raw = [sampler.measure_raw_throughput(raw_steps_per_env, seed=r)]
            calls = [sample(params, 2 * r + 1), sample(params, 2 * r + 2)]
            raw.append(sampler.measure_raw_throughput(raw_steps_per_env, seed=r))
            raw_rate = sum(x.env_steps for x in raw) / sum(x.seconds for x in raw)
            seconds = sum(c["wall_s"] for c in calls)
            steps = sum(c["env_steps"] for c in calls)
            per_step = 1e3 / sum(c["policy_calls"] for c in calls)
            policy = sum(c["policy_seconds"] for c in calls)
            workers = sum(c["worker_seconds"] for c in calls)
            rounds.append({
                "raw_steps_per_s": raw_rate,
                "sampler_steps_per_s": steps / seconds,
                "sampler_over_raw": (steps / seconds) / raw_rate,
                "sample_call_s": seconds / len(calls),
                "env_steps_per_call": steps / len(calls),
                "policy_calls_per_call": sum(c["policy_calls"] for c in calls) / len(calls),
                "policy_ms_per_step": policy * per_step,
                "workers_ms_per_step": workers * per_step,
                "main_other_ms_per_step": (seconds - policy - workers) * per_step,
                "policy_share_of_call": policy / seconds,
                "restarts": sum(c["restarts"] for c in calls),
            })
        # Pre-update sampling: every task has the same parameters (an expanded tensor).
        shared = {k: v.detach().expand(args.tasks, *v.shape) for k, v in model.named_parameters()}
        shared_calls = [sample(shared, 1000 + r) for r in range(2)]
        shared_policy_ms = 1e3 * statistics.median(
            c["policy_seconds"] / c["policy_calls"] for c in shared_calls)
        num_slots = sampler.num_slots
    summary = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    summary["shared_params_policy_ms_per_step"] = shared_policy_ms
    ratios = [r["sampler_over_raw"] for r in rounds]
    return {"num_slots": num_slots, "raw_steps_per_env": raw_steps_per_env,
            "rounds": rounds, "median": summary,
            "sampler_over_raw_min_max": [min(ratios), max(ratios)]}


def plot(result: dict[str, Any], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds, median = result["rounds"], result["median"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    x = range(len(rounds))
    ax.bar([i - 0.2 for i in x], [r["raw_steps_per_s"] for r in rounds], 0.4,
           label="raw: workers step random actions, no policy, no IPC", color="tab:gray")
    ax.bar([i + 0.2 for i in x], [r["sampler_steps_per_s"] for r in rounds], 0.4,
           label="sampler: full sample() call", color="tab:blue")
    for i, r in enumerate(rounds):
        ax.text(i + 0.2, r["sampler_steps_per_s"], f"{r['sampler_over_raw']:.2f}",
                ha="center", va="bottom", fontsize=9)
    ax.set_xticks(list(x), [f"round {i + 1}" for i in x])
    ax.set_ylabel("env steps / s (all workers)")
    ax.set_title(f"{args.env}, {args.tasks} tasks x {args.episodes} episodes, "
                 f"{args.workers} workers x {args.envs_per_worker} envs\n"
                 f"sampler / raw = {median['sampler_over_raw']:.2f} (median; target >= "
                 f"{TARGET_SAMPLER_OVER_RAW})", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)

    parts = [("workers: envs + IPC", median["workers_ms_per_step"], "tab:blue"),
             ("policy, per-task params (vmap)", median["policy_ms_per_step"], "tab:orange"),
             ("rest of the main process", median["main_other_ms_per_step"], "tab:gray")]
    left = 0.0
    for label, ms, color in parts:
        ax2.barh(["per-task\nparams"], [ms], left=[left], color=color,
                 label=f"{label}: {ms:.2f} ms")
        left += ms
    ax2.barh(["policy,\nshared params"], [median["shared_params_policy_ms_per_step"]],
             color="tab:green",
             label=f"policy, shared params: {median['shared_params_policy_ms_per_step']:.2f} ms")
    ax2.set_xlabel("ms per step of a sample call (median over rounds)")
    ax2.set_title(f"{1e3 * median['sample_call_s']:.0f} ms per call, "
                  f"{median['policy_calls_per_call']:.0f} steps", fontsize=10)
    ax2.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="sim_envs/Reach-v0")
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--envs-per-worker", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    if args.quick:
        args.rounds = 2
    if args.rounds < 1 or args.workers < 1:
        raise ValueError("--rounds and --workers must be >= 1 (the raw run needs workers)")

    info = machine_info()
    info["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    info["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    info["load_average_before"] = os.getloadavg()
    result = measure(args)
    info["load_average_after"] = os.getloadavg()

    median = result["median"]
    print(f"\n{args.env}: {args.tasks} tasks x {args.episodes} episodes, {args.workers} workers "
          f"x {args.envs_per_worker} envs ({result['num_slots']} slots)")
    print(f"{'round':>5s} {'raw/s':>8s} {'sampler/s':>10s} {'ratio':>6s} {'call s':>7s} "
          f"{'ms/step: workers':>17s} {'policy':>7s} {'other':>6s}")
    for i, r in enumerate(result["rounds"]):
        print(f"{i + 1:5d} {r['raw_steps_per_s']:8.0f} {r['sampler_steps_per_s']:10.0f} "
              f"{r['sampler_over_raw']:6.3f} {r['sample_call_s']:7.3f} "
              f"{r['workers_ms_per_step']:17.3f} {r['policy_ms_per_step']:7.3f} "
              f"{r['main_other_ms_per_step']:6.3f}")
    ok = median["sampler_over_raw"] >= TARGET_SAMPLER_OVER_RAW
    low, high = result["sampler_over_raw_min_max"]
    print(f"median sampler/raw = {median['sampler_over_raw']:.3f} (rounds {low:.3f}..{high:.3f}; "
          f"target >= {TARGET_SAMPLER_OVER_RAW}: {'PASS' if ok else 'FAIL'}); "
          f"{median['sample_call_s']:.3f} s per call; policy {median['policy_ms_per_step']:.3f} "
          f"ms per step ({100 * median['policy_share_of_call']:.1f}% of the call), "
          f"{median['shared_params_policy_ms_per_step']:.3f} ms with shared params")

    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"machine": info, "config": {k: (str(v) if isinstance(v, Path) else v)
                                           for k, v in vars(args).items()},
               "target_sampler_over_raw": TARGET_SAMPLER_OVER_RAW, "pass": ok, **result}
    (args.out / "bench_sampler.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(result, args, args.out / "bench_sampler.png")
    print(f"wrote {args.out / 'bench_sampler.json'} and bench_sampler.png")


if __name__ == "__main__":
    main()
