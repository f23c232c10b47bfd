"""Sampler benchmark: MultiTaskSampler throughput against the raw throughput of its workers.

For each ``--envs-per-worker`` value (the first is the headline configuration), one sampler
of ``--workers`` processes is measured, alternating in ``--rounds`` rounds between:

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
shared and noisy). Also reported: time per sample call and its split per policy call (one
per pipeline stage: half of every worker's envs, so about two per env step) into the
policy (batched over the stage's running slots, per-task parameters), the time blocked
waiting for the workers' replies (env time the pipeline did not hide) and the rest of the
main process (messages, bookkeeping); the main process's CPU time per call; and the
policy time per call when all tasks share parameters (pre-update sampling: one plain
matmul per layer).

The sampler pipelines: while the main process handles one half of every worker's envs,
the workers step the other half. On a machine with as many cores as workers the main
process's CPU time still comes out of the workers' cores, so its per-call costs (policy,
messages) weigh less with more envs per worker; the sweep shows by how much. The
scheduling priority of the run (nice value, Linux autogroup) is recorded, as other jobs on
the machine change the figures.

With ``--scaling`` it measures a scaling curve instead: 1, 2, ... ``--workers`` workers
(default: every core) at the first ``--envs-per-worker`` value, the workload sized to the
slots (``--slot-episodes`` episodes per slot: tasks = slots x slot-episodes / episodes),
and reports at each point the sampler's throughput, its ratio to the same workers' raw
throughput, and its ratio to linear scaling from one worker (targets: >= 0.8 each).

Usage::

    python -m bench.bench_sampler     # Reach, 10 tasks x 10 episodes, 2 workers x 10/25/50 envs
    python -m bench.bench_sampler --quick   # 2 rounds, 10 envs per worker only
    python -m bench.bench_sampler --scaling --envs-per-worker 10 --rounds 2   # 1..cores workers

Writes ``bench/results/sampler/bench_sampler.json`` and ``bench_sampler.png``
(``--scaling``: ``bench_sampler_scaling.json`` and ``.png``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import REPO, command_line, machine_info
from metarobot.core.policy import GaussianMLPPolicy
from metarobot.sampling.sampler import MultiTaskSampler
from sim_envs.registry import make_family

OUT_DIR = REPO / "bench" / "results" / "sampler"
TARGET_SAMPLER_OVER_RAW = 0.8


def scheduling() -> dict[str, Any]:
    """This process's nice value and Linux autogroup (whose nice value sets the CPU share
    of this session against other sessions' jobs)."""
    try:
        autogroup = Path("/proc/self/autogroup").read_text().strip()
    except OSError:
        autogroup = None
    return {"nice": os.nice(0), "autogroup": autogroup}


def family_of(env_id: str) -> str:
    from sim_envs.registry import ENV_IDS

    for name, gym_id in ENV_IDS.items():
        if gym_id == env_id:
            return name
    raise ValueError(f"{env_id!r} is not a sim_envs family id; known: {list(ENV_IDS.values())}")


def measure(args: argparse.Namespace, envs_per_worker: int) -> dict[str, Any]:
    """Rounds of raw, sample, sample, raw on one sampler; medians over rounds."""
    family = make_family(family_of(args.env))
    tasks = family.sample_tasks(args.tasks, "train", seed=0)
    rounds: list[dict[str, float]] = []
    with MultiTaskSampler(args.env, args.workers, envs_per_worker,
                          device=args.device) as sampler:
        model = GaussianMLPPolicy(sampler.obs_dim, sampler.act_dim).to(args.device)
        # Adapted parameters differ per task: the vmap path.
        params = {k: v.detach() + 0.01 * torch.randn(args.tasks, *v.shape, device=args.device)
                  for k, v in model.named_parameters()}
        generator = torch.Generator(device=args.device).manual_seed(0)
        env_steps_per_call = args.tasks * args.episodes * sampler.max_episode_steps
        raw_steps_per_env = max(1, env_steps_per_call // sampler.num_slots)

        def sample(call_params: dict[str, torch.Tensor], seed: int) -> dict[str, float]:
            start, cpu_start = time.perf_counter(), time.process_time()
            batch = sampler.sample(model, call_params, tasks, args.episodes, seed=seed,
                                   generator=generator)
            stats = dict(sampler.last_stats, wall_s=time.perf_counter() - start,
                         main_cpu_s=time.process_time() - cpu_start)
            stats["env_steps"] = float(batch.mask.sum())
            return stats

        # Warm-up: first set_task on every env, first vmap trace, page-in.
        sample(params, 0)
        sampler.measure_raw_throughput(min(raw_steps_per_env, 50), seed=0)
        for r in range(args.rounds):
            print(f"{envs_per_worker} envs per worker: round {r + 1}/{args.rounds} ...",
                  flush=True)
            raw = [sampler.measure_raw_throughput(raw_steps_per_env, seed=r)]
            calls = [sample(params, 2 * r + 1), sample(params, 2 * r + 2)]
            raw.append(sampler.measure_raw_throughput(raw_steps_per_env, seed=r))
            raw_rate = sum(x.env_steps for x in raw) / sum(x.seconds for x in raw)
            seconds = sum(c["wall_s"] for c in calls)
            steps = sum(c["env_steps"] for c in calls)
            per_call = 1e3 / sum(c["policy_calls"] for c in calls)
            policy = sum(c["policy_seconds"] for c in calls)
            workers = sum(c["worker_seconds"] for c in calls)
            rounds.append({
                "raw_steps_per_s": raw_rate,
                "sampler_steps_per_s": steps / seconds,
                "sampler_over_raw": (steps / seconds) / raw_rate,
                "sample_call_s": seconds / len(calls),
                "env_steps_per_call": steps / len(calls),
                "policy_calls_per_call": sum(c["policy_calls"] for c in calls) / len(calls),
                "policy_ms_per_policy_call": policy * per_call,
                "waiting_ms_per_policy_call": workers * per_call,
                "main_other_ms_per_policy_call": (seconds - policy - workers) * per_call,
                "policy_share_of_call": policy / seconds,
                "main_cpu_share_of_call": sum(c["main_cpu_s"] for c in calls) / seconds,
                "restarts": sum(c["restarts"] for c in calls),
            })
        # Pre-update sampling: every task has the same parameters (an expanded tensor).
        shared = {k: v.detach().expand(args.tasks, *v.shape) for k, v in model.named_parameters()}
        shared_calls = [sample(shared, 1000 + r) for r in range(2)]
        shared_policy_ms = 1e3 * statistics.median(
            c["policy_seconds"] / c["policy_calls"] for c in shared_calls)
        num_slots = sampler.num_slots
    summary = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    summary["shared_params_policy_ms_per_policy_call"] = shared_policy_ms
    ratios = [r["sampler_over_raw"] for r in rounds]
    return {"envs_per_worker": envs_per_worker, "num_slots": num_slots,
            "raw_steps_per_env": raw_steps_per_env, "rounds": rounds, "median": summary,
            "sampler_over_raw_min_max": [min(ratios), max(ratios)]}


def scaling(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The sampler at 1..``args.workers`` workers, the workload sized to the slots."""
    envs = args.envs_per_worker[0]
    points = []
    for workers in range(1, args.workers + 1):
        tasks = max(1, workers * envs * args.slot_episodes // args.episodes)
        point_args = argparse.Namespace(**{**vars(args), "workers": workers, "tasks": tasks})
        result = measure(point_args, envs)
        result.update(workers=workers, tasks=tasks)
        points.append(result)
    one = points[0]["median"]["sampler_steps_per_s"]
    for point in points:
        rate = point["median"]["sampler_steps_per_s"]
        point["over_linear"] = rate / (one * point["workers"])
        print(f"{point['workers']:>3} workers x {envs} envs, {point['tasks']} tasks: "
              f"{rate:8.0f} env steps/s, sampler/raw {point['median']['sampler_over_raw']:.3f},"
              f" over linear {point['over_linear']:.3f}", flush=True)
    return points


def plot_scaling(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workers = [p["workers"] for p in points]
    rate = [p["median"]["sampler_steps_per_s"] for p in points]
    raw = [p["median"]["raw_steps_per_s"] for p in points]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    ax.plot(workers, rate, "o-", label="sampler")
    ax.plot(workers, raw, "s--", label="raw (same workers)")
    ax.plot(workers, [rate[0] * w for w in workers], ":", label="linear from 1 worker")
    ax.set_xlabel("workers")
    ax.set_ylabel("env steps / s")
    ax.legend()
    bx.plot(workers, [p["median"]["sampler_over_raw"] for p in points], "o-", label="sampler / raw")
    bx.plot(workers, [p["over_linear"] for p in points], "s-", label="sampler / linear")
    bx.axhline(TARGET_SAMPLER_OVER_RAW, color="grey", ls=":", label="target 0.8")
    bx.set_ylim(0, 1.2)
    bx.set_xlabel("workers")
    bx.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(results: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
    labels = [f"{r['envs_per_worker']} envs/worker\n({r['num_slots']} slots)" for r in results]
    x = list(range(len(results)))
    medians = [r["median"] for r in results]
    ax.bar([i - 0.2 for i in x], [m["raw_steps_per_s"] for m in medians], 0.4,
           color="tab:gray", label="raw: workers step random actions, no policy, no IPC")
    ax.bar([i + 0.2 for i in x], [m["sampler_steps_per_s"] for m in medians], 0.4,
           color="tab:blue", label="sampler: full sample() call")
    for i, r in enumerate(results):
        low, high = r["sampler_over_raw_min_max"]
        ax.text(i + 0.2, r["median"]["sampler_steps_per_s"],
                f"{r['median']['sampler_over_raw']:.2f}\n[{low:.2f}, {high:.2f}]",
                ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("env steps / s, all workers (median over rounds)")
    ax.set_title(f"{args.env}, {args.tasks} tasks x {args.episodes} episodes, {args.workers} "
                 f"workers\nlabels: sampler / raw, median [min, max] of {args.rounds} rounds "
                 f"(target >= {TARGET_SAMPLER_OVER_RAW})", fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    ax.margins(y=0.35)

    parts = [("waiting for worker replies", "waiting_ms_per_policy_call", "tab:blue"),
             ("policy, per-task params", "policy_ms_per_policy_call", "tab:orange"),
             ("rest of the main process", "main_other_ms_per_policy_call", "tab:gray")]
    bottoms = [0.0] * len(results)
    for label, key, color in parts:
        values = [m[key] for m in medians]
        ax2.bar([i - 0.2 for i in x], values, 0.4, bottom=bottoms, color=color, label=label)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    ax2.bar([i + 0.2 for i in x],
            [m["shared_params_policy_ms_per_policy_call"] for m in medians], 0.4,
            color="tab:green", label="policy, shared params")
    for i, m in enumerate(medians):
        ax2.text(i - 0.2, bottoms[i], f"policy {m['policy_ms_per_policy_call']:.2f} ms\n"
                 f"{1e3 * m['sample_call_s']:.0f} ms/call", ha="center", va="bottom", fontsize=7)
    ax2.set_xticks(x, labels, fontsize=8)
    ax2.set_ylabel("ms per policy call = pipeline stage (median)")
    ax2.set_title("where the main process's time goes (about 2 policy calls per env step)",
                  fontsize=9)
    ax2.legend(fontsize=7, loc="upper left")
    ax2.margins(y=0.45)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="sim_envs/Reach-v0")
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default 2; with --scaling: every core)")
    parser.add_argument("--scaling", action="store_true",
                        help="measure 1..--workers workers, the workload sized to the slots")
    parser.add_argument("--slot-episodes", type=int, default=2,
                        help="with --scaling: episodes per slot per sample call")
    parser.add_argument("--envs-per-worker", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="2 rounds, first config only")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    if args.workers is None:
        args.workers = (os.cpu_count() or 2) if args.scaling else 2
    if args.quick:
        args.rounds, args.envs_per_worker = 2, args.envs_per_worker[:1]
    if args.rounds < 1 or args.workers < 1 or min(args.envs_per_worker) < 1:
        raise ValueError("--rounds, --workers and --envs-per-worker must be >= 1")

    info = machine_info()
    info["command"] = command_line()
    info["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    info["load_average_before"] = os.getloadavg()
    info["scheduling"] = scheduling()
    if args.scaling:
        points = scaling(args)
        info["load_average_after"] = os.getloadavg()
        args.out.mkdir(parents=True, exist_ok=True)
        worst_raw = min(p["median"]["sampler_over_raw"] for p in points)
        worst_linear = min(p["over_linear"] for p in points)
        payload = {"machine": info, "config": {k: (str(v) if isinstance(v, Path) else v)
                                               for k, v in vars(args).items()},
                   "target": TARGET_SAMPLER_OVER_RAW, "min_sampler_over_raw": worst_raw,
                   "min_over_linear": worst_linear, "points": points}
        (args.out / "bench_sampler_scaling.json").write_text(json.dumps(payload, indent=2))
        plot_scaling(points, args.out / "bench_sampler_scaling.png")
        print(f"worst sampler/raw {worst_raw:.3f}, worst over linear {worst_linear:.3f} "
              f"(targets >= {TARGET_SAMPLER_OVER_RAW}); wrote "
              f"{args.out / 'bench_sampler_scaling.json'}")
        return
    results = [measure(args, n) for n in args.envs_per_worker]
    info["load_average_after"] = os.getloadavg()

    print(f"\n{args.env}: {args.tasks} tasks x {args.episodes} episodes, {args.workers} workers")
    print(f"{'envs/w':>6s} {'round':>5s} {'raw/s':>8s} {'sampler/s':>10s} {'ratio':>6s} "
          f"{'call s':>7s} {'ms/policy call: waiting':>24s} {'policy':>7s} {'other':>6s} "
          f"{'main CPU':>8s}")
    for result in results:
        for i, r in enumerate(result["rounds"]):
            print(f"{result['envs_per_worker']:6d} {i + 1:5d} {r['raw_steps_per_s']:8.0f} "
                  f"{r['sampler_steps_per_s']:10.0f} {r['sampler_over_raw']:6.3f} "
                  f"{r['sample_call_s']:7.3f} {r['waiting_ms_per_policy_call']:24.3f} "
                  f"{r['policy_ms_per_policy_call']:7.3f} "
                  f"{r['main_other_ms_per_policy_call']:6.3f} "
                  f"{r['main_cpu_share_of_call']:8.2f}")
    for result in results:
        m = result["median"]
        low, high = result["sampler_over_raw_min_max"]
        print(f"{result['envs_per_worker']} envs/worker: median sampler/raw = "
              f"{m['sampler_over_raw']:.3f} (rounds {low:.3f}..{high:.3f}); "
              f"{m['sample_call_s']:.3f} s per call; policy {m['policy_ms_per_policy_call']:.3f}"
              f" ms per call ({100 * m['policy_share_of_call']:.1f}% of the sample call), "
              f"{m['shared_params_policy_ms_per_policy_call']:.3f} ms with shared params; "
              f"main process CPU {100 * m['main_cpu_share_of_call']:.0f}% of the call")
    headline = results[0]["median"]["sampler_over_raw"]
    ok = headline >= TARGET_SAMPLER_OVER_RAW
    print(f"headline ({args.envs_per_worker[0]} envs/worker): sampler/raw = {headline:.3f}, "
          f"target >= {TARGET_SAMPLER_OVER_RAW}: {'PASS' if ok else 'FAIL'}")

    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"machine": info, "config": {k: (str(v) if isinstance(v, Path) else v)
                                           for k, v in vars(args).items()},
               "target_sampler_over_raw": TARGET_SAMPLER_OVER_RAW,
               "headline_sampler_over_raw": headline, "pass": ok, "results": results}
    (args.out / "bench_sampler.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(results, args, args.out / "bench_sampler.png")
    print(f"wrote {args.out / 'bench_sampler.json'} and bench_sampler.png")


if __name__ == "__main__":
    main()
