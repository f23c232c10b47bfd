"""Does the inner step point the right way? The gain of one step, scaled, on paired episodes.

``bench/results.py`` measures the gain of one adaptation step as the difference of two
independent samples (the episodes before and after have different reset seeds, so on
locomotion different commands), which is noisy. This probe asks a sharper question of one
checkpoint, on held-out test tasks:

1. sample ``E`` episodes per task with theta (the adaptation data) and take the trainer's
   inner step on them, with its step size multiplied by each ``--scales`` value
   (Meta-SGD's learned rates or ``inner.lr``; scale 0 is theta itself);
2. sample ``E`` fresh episodes per task with each scaled step's parameters, **with the same
   reset seeds and the same action noise** for every scale (common random numbers: the same
   commands, terrain starts and noise draws), so the difference between two scales is the
   policies' difference, not the episodes'.

The gain at scale s is ``R(s) - R(0)`` per task (mean over its E episodes), reported with
a 95 % interval over tasks, overall and per group of tasks (locomotion: the held-out
factor). If the gain rises with the scale, the step points the right way but is too small;
if it is flat or falls, the step's direction carries no useful signal at this budget.

Writes ``adaptation_probe.json`` and ``adaptation_probe.png`` (gain against scale).

Usage::

    python -m bench.adaptation_probe bench/results/meta/locomotion/seed0/saved/meta/it00080 \\
        --scales 0 1 --tasks 60 --eval-seed 1 \\
        --out bench/results/adaptation_probe/locomotion_dyn_seed0_it00080_t60
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import command_line, write_json
from bench.results import provenance
from metarobot.core.advantages import compute_advantages
from metarobot.sampling.rollouts import adapt_params, sample_episodes
from metarobot.sampling.sampler import MultiTaskSampler
from metarobot.training.evaluate import load_trained_policy, mean_ci95
from sim_envs.registry import env_id, make_family
from sim_envs.tasks import Task


def task_group(family: str, task: Task) -> str:
    """The group a test task is reported in: locomotion's held-out factor, else 'all'."""
    if family == "locomotion":
        from sim_envs.locomotion import held_out_factors

        return ",".join(held_out_factors(task.params))  # type: ignore[arg-type]
    return "all"


def probe(run: Path, scales: list[float], num_tasks: int, episodes: int | None, seed: int,
          num_workers: int | None) -> dict[str, Any]:
    policy = load_trained_policy(run)
    cfg = policy.config
    episodes = episodes or cfg.meta_batch.episodes
    tasks = make_family(cfg.family).sample_tasks(num_tasks, "test", seed=seed)
    workers = num_workers or cfg.sampler.num_workers
    returns = np.zeros((len(scales), num_tasks))
    success = np.zeros((len(scales), num_tasks))
    t0 = time.perf_counter()
    with MultiTaskSampler(env_id(cfg.family), workers, cfg.sampler.envs_per_worker,
                          env_kwargs=cfg.env_kwargs) as sampler:
        theta = {k: v.detach().expand(num_tasks, *v.shape) for k, v in policy.params.items()}
        data = sample_episodes(sampler, policy.model, theta, tasks, episodes,
                               seed=10_000 + seed, generator=torch.Generator().manual_seed(seed))
        adv, _ = compute_advantages(data.obs, data.rew, data.mask, cfg.advantages.gamma,
                                    cfg.advantages.lam, cfg.advantages.normalize)
        for i, scale in enumerate(scales):
            inner = cfg.inner
            lr = (None if policy.meta_sgd_lr is None
                  else {k: v * scale for k, v in policy.meta_sgd_lr.items()})
            if lr is None:
                inner = dataclasses.replace(inner, lr=inner.lr * scale)
            with torch.no_grad():
                adapted, _, _ = adapt_params(policy.model, policy.params, [data], [adv],
                                             inner, lr)
            # Same reset seeds and noise for every scale: paired episodes.
            batch = sample_episodes(sampler, policy.model,
                                    {k: v.detach() for k, v in adapted.items()}, tasks,
                                    episodes, seed=20_000 + seed,
                                    generator=torch.Generator().manual_seed(seed + 1))
            returns[i] = batch.episode_returns.mean(1).cpu().numpy()
            success[i] = batch.success.mean(1).cpu().numpy()
            print(f"scale {scale:g}: return {returns[i].mean():.2f}, "
                  f"success {success[i].mean():.2f}", flush=True)
    groups = [task_group(cfg.family, t) for t in tasks]
    zero = scales.index(0.0) if 0.0 in scales else None
    summary: dict[str, Any] = {}
    for name in ["all", *sorted(set(groups) - {"all"})]:
        idx = [j for j, g in enumerate(groups) if name == "all" or g == name]
        rows = []
        for i, scale in enumerate(scales):
            row = {"scale": scale, "tasks": len(idx),
                   "return": mean_ci95(returns[i, idx]), "success": mean_ci95(success[i, idx])}
            if zero is not None:
                row["gain"] = mean_ci95(returns[i, idx] - returns[zero, idx])
            rows.append(row)
        summary[name] = rows
    return {"run": str(run), "family": cfg.family, "iteration": policy.iteration,
            "scales": scales, "episodes": episodes, "eval_seed": seed,
            "task_ids": [t.task_id for t in tasks], "task_groups": groups,
            "returns": returns.tolist(), "success": success.tolist(), "summary": summary,
            "wall_s": time.perf_counter() - t0, "command": command_line(), **provenance()}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in result["summary"].items():
        if "gain" not in rows[0]:
            continue
        gain = np.array([r["gain"] for r in rows])
        ax.errorbar(result["scales"], gain[:, 0], yerr=gain[:, 1], capsize=3, marker="o",
                    label=f"{name} ({rows[0]['tasks']} tasks)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("inner step size / trained step size")
    ax.set_ylabel("return gain over theta (paired episodes)")
    ax.set_title(f"{result['family']}, iteration {result['iteration']}: "
                 f"{result['episodes']} episodes per step")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="run or stage folder holding checkpoint.pt")
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 4.0],
                   help="multiples of the trained inner step size (0 = theta)")
    p.add_argument("--tasks", type=int, default=20, help="held-out test tasks")
    p.add_argument("--episodes", type=int, default=None,
                   help="episodes per task for the step and for each measurement "
                        "(default: the config's meta_batch.episodes)")
    p.add_argument("--eval-seed", type=int, default=0, help="seed of the test-task draw")
    p.add_argument("--workers", type=int, default=None, help="sampler workers")
    p.add_argument("--out", type=Path, default=Path("bench/results/adaptation_probe"))
    args = p.parse_args(argv)
    if any(s < 0 for s in args.scales):
        p.error("--scales must be >= 0")
    result = probe(args.run, sorted(set(args.scales)), args.tasks, args.episodes,
                   args.eval_seed, args.workers)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "adaptation_probe.json", result)
    plot(result, args.out / "adaptation_probe.png")
    for name, rows in result["summary"].items():
        cells = ", ".join(f"x{r['scale']:g}: {r['gain'][0]:+.1f} ± {r['gain'][1]:.1f}"
                          for r in rows if "gain" in r)
        print(f"{name:>10} gain {cells}")
    print(f"wrote {args.out}/adaptation_probe.json and .png")


if __name__ == "__main__":
    main()
