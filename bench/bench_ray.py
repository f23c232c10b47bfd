"""Ray backend benchmark: the sampler's ray backend against its local backend, one run.

For each ``--envs-per-worker`` value (the first is the headline), two samplers of
``--workers`` workers with the same envs are made: ``backend="local"`` (worker processes)
and ``backend="ray"`` (the same worker code as Ray actors, on a local Ray instance with one
CPU per worker that the ray sampler starts). Each of ``--rounds`` rounds runs one full
``sample`` call of ``--tasks`` tasks x ``--episodes`` episodes on each backend in the order
local, ray, ray, local (so a drift of the machine's load within a round cancels), with a
64x64 Gaussian MLP policy and per-task parameters (the trainer's case). A call's rate is
its env steps over its wall time (startup excluded, task setting and resets included);
the round's ratio is the ray backend's rate over the local backend's. Also recorded: the
CPU time per env step of the main process (with Ray: its client threads too) and of the
workers (Ray's own daemons, the raylet and GCS, are not counted). The median ratio
over rounds is reported with its spread (target >= 0.8). The idle sampler's workers wait
on a message, so only one backend steps envs at a time.

Both backends run the same schedule and give the same batch (checked on the warm-up
call). Ray starts its workers at a higher nice value than the process that starts it
(Ray's ``worker_niceness``: 19 under a main process at nice 10, against 10 for the local
backend's workers), so with as many workers as cores the main process's policy calls
preempt the actors' env steps, which helps the pipeline. ``--equal-nice`` sets
``RAY_worker_niceness=0`` (actors at the main process's nice value, as the local
workers), so the ratio is the cost of Ray's messaging (actor calls, object store)
against pipes alone; it writes ``bench_ray_equal_nice.json``.

Usage::

    python -m bench.bench_ray      # Reach, 10 tasks x 10 episodes, 2 workers x 10 / 50 envs
    python -m bench.bench_ray --rounds 2 --envs-per-worker 10   # quicker
    python -m bench.bench_ray --equal-nice   # actors at the main process's nice value

Writes ``bench/results/sampler/bench_ray.json``.
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

from bench.bench_sampler import OUT_DIR, family_of, scheduling
from bench.common import PACKAGES, command_line, machine_info
from metarobot.core.batch import EpisodeBatch
from metarobot.core.policy import GaussianMLPPolicy
from metarobot.sampling.sampler import MultiTaskSampler
from sim_envs.registry import make_family

TARGET_RAY_OVER_LOCAL = 0.8


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time so far of the processes ``pids`` (all their threads)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


def worker_scheduling(pids: list[int]) -> list[dict[str, Any]]:
    """Nice value and Linux autogroup of each worker process. Ray starts its workers with
    a higher nice value than the driver's (its ``worker_niceness``); in the same autogroup
    that matters only against this run's own processes (the main process's policy calls
    take precedence over the actors' env steps)."""
    out = []
    for pid in pids:
        try:
            autogroup = Path(f"/proc/{pid}/autogroup").read_text().strip()
        except OSError:
            autogroup = None
        out.append({"pid": pid, "nice": os.getpriority(os.PRIO_PROCESS, pid),
                    "autogroup": autogroup})
    return out


def measure(args: argparse.Namespace, envs_per_worker: int) -> dict[str, Any]:
    """Rounds of local, ray, ray, local sample calls; per-round ratios and medians."""
    tasks = make_family(family_of(args.env)).sample_tasks(args.tasks, "train", seed=0)
    with MultiTaskSampler(args.env, args.workers, envs_per_worker) as local, \
            MultiTaskSampler(args.env, args.workers, envs_per_worker, backend="ray") as ray_:
        samplers = {"local": local, "ray": ray_}
        model = GaussianMLPPolicy(local.obs_dim, local.act_dim)
        params = {k: v.detach() + 0.01 * torch.randn(args.tasks, *v.shape)
                  for k, v in model.named_parameters()}

        def sample(backend: str, seed: int) -> tuple[dict[str, float], EpisodeBatch]:
            sampler = samplers[backend]
            pids = sampler.worker_pids
            start, main_cpu, worker_cpu = time.perf_counter(), time.process_time(), \
                cpu_seconds(pids)
            batch = sampler.sample(model, params, tasks, args.episodes, seed=seed,
                                   generator=torch.Generator().manual_seed(seed))
            wall = time.perf_counter() - start
            steps = float(batch.mask.sum())
            return {"wall_s": wall, "env_steps": steps, "steps_per_s": steps / wall,
                    "main_cpu_s": time.process_time() - main_cpu,
                    "worker_cpu_s": cpu_seconds(pids) - worker_cpu,
                    "waiting_s": sampler.last_stats["worker_seconds"],
                    "restarts": sampler.last_stats["restarts"]}, batch

        workers = {backend: worker_scheduling(s.worker_pids) for backend, s in samplers.items()}
        # Warm-up (first set_task on every env, page-in), and the same batch from both.
        warm = {backend: sample(backend, 0)[1] for backend in samplers}
        same = all(torch.equal(x, y) for x, y in zip(warm["local"], warm["ray"]))
        rounds = []
        for r in range(args.rounds):
            print(f"{envs_per_worker} envs per worker: round {r + 1}/{args.rounds} ...",
                  flush=True)
            calls = {"local": [], "ray": []}
            for i, backend in enumerate(("local", "ray", "ray", "local")):
                calls[backend].append(sample(backend, 1 + 4 * r + i)[0])
            rate = {b: sum(c["env_steps"] for c in cs) / sum(c["wall_s"] for c in cs)
                    for b, cs in calls.items()}
            rounds.append({"local_steps_per_s": rate["local"], "ray_steps_per_s": rate["ray"],
                           "ray_over_local": rate["ray"] / rate["local"],
                           "local_call_s": statistics.mean(c["wall_s"] for c in calls["local"]),
                           "ray_call_s": statistics.mean(c["wall_s"] for c in calls["ray"]),
                           "local_waiting_s": statistics.mean(
                               c["waiting_s"] for c in calls["local"]),
                           "ray_waiting_s": statistics.mean(c["waiting_s"] for c in calls["ray"]),
                           **{f"{b}_{part}_cpu_ms_per_step": 1e3 * sum(
                               c[f"{part}_cpu_s"] for c in cs) / sum(c["env_steps"] for c in cs)
                              for b, cs in calls.items() for part in ("main", "worker")},
                           "restarts": sum(c["restarts"] for cs in calls.values() for c in cs)})
    ratios = [r["ray_over_local"] for r in rounds]
    return {"envs_per_worker": envs_per_worker, "num_slots": args.workers * envs_per_worker,
            "same_batch": same, "worker_scheduling": workers, "rounds": rounds,
            "median": {key: statistics.median(r[key] for r in rounds) for key in rounds[0]},
            "ray_over_local_min_max": [min(ratios), max(ratios)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="sim_envs/Reach-v0")
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--envs-per-worker", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--equal-nice", action="store_true",
                        help="RAY_worker_niceness=0: actors at this process's nice value")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    if args.rounds < 1 or args.workers < 1 or min(args.envs_per_worker) < 1:
        raise ValueError("--rounds, --workers and --envs-per-worker must be >= 1")

    info = machine_info((*PACKAGES, "ray"))
    info["command"] = command_line()
    info["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    info["load_average_before"] = os.getloadavg()
    info["scheduling"] = scheduling()
    if args.equal_nice:
        os.environ["RAY_worker_niceness"] = "0"  # read by the Ray instance the sampler starts
    info["ray_worker_niceness_env"] = os.environ.get("RAY_worker_niceness")
    results = [measure(args, n) for n in args.envs_per_worker]
    info["load_average_after"] = os.getloadavg()

    print(f"\n{args.env}: {args.tasks} tasks x {args.episodes} episodes, {args.workers} workers")
    print(f"{'envs/w':>6s} {'round':>5s} {'local/s':>8s} {'ray/s':>8s} {'ratio':>6s}")
    for result in results:
        for i, r in enumerate(result["rounds"]):
            print(f"{result['envs_per_worker']:6d} {i + 1:5d} {r['local_steps_per_s']:8.0f} "
                  f"{r['ray_steps_per_s']:8.0f} {r['ray_over_local']:6.3f}")
    for result in results:
        m, (low, high) = result["median"], result["ray_over_local_min_max"]
        print(f"{result['envs_per_worker']} envs/worker: median ray/local = "
              f"{m['ray_over_local']:.3f} (rounds {low:.3f}..{high:.3f}); "
              f"{m['local_call_s']:.2f} s vs {m['ray_call_s']:.2f} s per call; "
              f"CPU ms per env step, main + workers: local {m['local_main_cpu_ms_per_step']:.3f}"
              f" + {m['local_worker_cpu_ms_per_step']:.3f}, ray {m['ray_main_cpu_ms_per_step']:.3f}"
              f" + {m['ray_worker_cpu_ms_per_step']:.3f}; "
              f"same batch: {result['same_batch']}; worker nice: "
              f"{ {b: [w['nice'] for w in ws] for b, ws in result['worker_scheduling'].items()} }")
    headline = results[0]["median"]["ray_over_local"]
    ok = headline >= TARGET_RAY_OVER_LOCAL
    print(f"headline ({args.envs_per_worker[0]} envs/worker): ray/local = {headline:.3f}, "
          f"target >= {TARGET_RAY_OVER_LOCAL}: {'PASS' if ok else 'FAIL'}")

    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"machine": info, "config": {k: (str(v) if isinstance(v, Path) else v)
                                           for k, v in vars(args).items()},
               "target_ray_over_local": TARGET_RAY_OVER_LOCAL,
               "headline_ray_over_local": headline, "pass": ok, "results": results}
    path = args.out / ("bench_ray_equal_nice.json" if args.equal_nice else "bench_ray.json")
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
