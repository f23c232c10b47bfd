"""Adaptation safety benchmark: how many held-out tasks does one adaptation make worse?

For each task (the same tasks, env seeds and action-noise seeds for every mode):

1. ``--episodes`` E episodes with the meta-learned parameters: the adaptation data, and
   the "before" returns;
2. one adaptation step (``AdaptivePolicy.adapt``);
3. ``--trial-episodes`` T episodes (with the trial rule on, the update's trial);
4. E "after" episodes with whatever parameters the runtime then uses, on the same env
   reset seeds and action noise as the before-episodes (common random numbers: a task
   whose update was rolled back replays its before-episodes exactly).

A task is **made worse** when its after mean return is below its before mean by more
than 2 standard errors of its before-episodes (``std(ddof=1) / sqrt(E)``). The **gain**
is after mean minus before mean; the **gain kept** is a mode's mean gain over today's.

Modes (``SafetyConfig`` over the bundle's recorded rules):

* ``today``: the runtime before the trust region and the trial: a step above ``max_kl``
  rejected (``max_backtracks=0``), no trial (``trial_episodes=0``);
* ``new``: the bundle's rules as exported now (trust region, trial, margin).

``--mode NAME:key=value,...`` adds a mode (e.g. ``--mode kl5:max_kl=5``).

Usage::

    python -m bench.bench_adapt_safety --bundle runs/quickstart/bundle --tasks 40

Writes ``bench/results/adapt_safety/bench_adapt_safety.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import command_line, git_head, machine_info
from deploy import AdaptivePolicy
from deploy.runtime import standard_error

OUT = Path(__file__).resolve().parent / "results" / "adapt_safety"
BASE_MODES: dict[str, dict[str, Any]] = {
    "today": {"max_backtracks": 0, "trial_episodes": 0},
    "new": {},
}


def parse_mode(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:key=value,...`` -> (name, SafetyConfig overrides)."""
    name, _, rest = text.partition(":")
    overrides: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        overrides[key] = int(value) if key in ("trial_episodes", "max_backtracks") else float(value)
    return name, overrides


def run_episodes(env: Any, policy: AdaptivePolicy, seeds: list[int]) -> list[float]:
    """One episode per seed (the env's reset seed and the action-noise seed); returns."""
    returns = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        policy.reseed(seed)
        total, done = 0.0, False
        while not done:
            action = policy.act(obs)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            policy.observe(obs, action, reward, terminated, truncated)
            total += float(reward)
            done = terminated or truncated
            obs = next_obs
        returns.append(total)
    return returns


def clean(value: Any) -> Any:
    """JSON-ready: NaN and inf floats as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def run_task(policy: AdaptivePolicy, env: Any, task: Any, index: int, args: argparse.Namespace,
             ) -> dict[str, Any]:
    """Before, adapt, trial, after on one task (see the module docstring)."""
    policy.reset_adaptation()
    env.unwrapped.set_task(task)
    base = args.seed * 1_000_003 + index * 1_000
    before_seeds = [base + e for e in range(args.episodes)]
    trial_seeds = [base + 500 + e for e in range(args.trial_episodes)]
    before = run_episodes(env, policy, before_seeds)
    report = policy.adapt(1)
    trial = run_episodes(env, policy, trial_seeds)
    verdict = policy.trial_report.state if policy.trial_report is not None else "none"
    after = run_episodes(env, policy, before_seeds)
    se = standard_error(before)
    return {"task_id": task.task_id, "before": before, "trial": trial, "after": after,
            "before_se": se, "gain": float(np.mean(after) - np.mean(before)),
            "worse": bool(np.mean(after) < np.mean(before) - 2 * se),
            "trial_worse": bool(np.mean(trial) < np.mean(before) - 2 * se) if trial else False,
            "accepted": report.accepted, "kl": report.kl, "backtracks": report.backtracks,
            "update_scale": report.update_scale, "verdict": verdict,
            "reason": report.reason}


def summarise(rows: list[dict[str, Any]], reference: float | None) -> dict[str, Any]:
    gains = np.array([r["gain"] for r in rows])
    return {"tasks": len(rows), "worse": int(sum(r["worse"] for r in rows)),
            "fraction_worse": float(np.mean([r["worse"] for r in rows])),
            "worst_drop_in_se": float(min((np.mean(r["after"]) - np.mean(r["before"]))
                                          / max(r["before_se"], 1e-12) for r in rows)),
            "mean_before": float(np.mean([np.mean(r["before"]) for r in rows])),
            "mean_after": float(np.mean([np.mean(r["after"]) for r in rows])),
            "mean_trial": float(np.mean([np.mean(r["trial"]) for r in rows]))
            if rows[0]["trial"] else None,
            "trial_worse": int(sum(r["trial_worse"] for r in rows)),
            "mean_gain": float(gains.mean()),
            "gain_kept": float(gains.mean() / reference) if reference else None,
            "rolled_back": int(sum(r["verdict"] == "rolled_back" for r in rows)),
            "rejected": int(sum(not r["accepted"] for r in rows)),
            "median_kl": float(np.nanmedian([r["kl"] for r in rows])),
            "halved": int(sum(r["backtracks"] > 0 for r in rows))}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(result["modes"])
    fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 4), sharey=True)
    for ax, name in zip(np.atleast_1d(axes), modes):
        rows = result["modes"][name]["tasks"]
        b = np.array([np.mean(r["before"]) for r in rows])
        a = np.array([np.mean(r["after"]) for r in rows])
        se = np.array([r["before_se"] for r in rows])
        worse = np.array([r["worse"] for r in rows])
        ax.errorbar(b, a - b, yerr=2 * se, fmt="none", ecolor="0.7", lw=1)
        ax.scatter(b[~worse], (a - b)[~worse], s=14, label="not worse")
        ax.scatter(b[worse], (a - b)[worse], s=20, c="red", label="worse by > 2 SE")
        ax.axhline(0, color="k", lw=0.8)
        s = result["modes"][name]["summary"]
        ax.set_title(f"{name}: {s['worse']}/{s['tasks']} worse, mean gain {s['mean_gain']:.2f}")
        ax.set_xlabel("mean return before adaptation")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("after - before (bars: 2 SE of before)")
    np.atleast_1d(axes)[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bundle", type=Path, default=Path("runs/quickstart/bundle"))
    parser.add_argument("--split", default="test", choices=("train", "test"))
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--trial-episodes", type=int, default=None,
                        help="episodes between adaptation and the after-episodes (default: "
                             "the new rule's trial length)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mode", action="append", default=[], type=parse_mode)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    import gymnasium

    import sim_envs  # noqa: F401

    commit = git_head()
    modes = {**BASE_MODES, **dict(args.mode)}
    probe = AdaptivePolicy.load(args.bundle)
    if args.trial_episodes is None:
        args.trial_episodes = probe.safety.trial_episodes
    env = gymnasium.make(probe.bundle.env_id, **probe.bundle.env_kwargs)
    tasks = env.unwrapped.sample_tasks(args.tasks, split=args.split, seed=args.seed)
    result: dict[str, Any] = {
        "command": command_line(argv),
        "seed": args.seed, "git_commit": commit, "bundle": str(args.bundle),
        "bundle_params_sha256": probe.bundle.metadata["params"]["sha256"],
        "bundle_safety": probe.bundle.metadata.get("safety", {}), "split": args.split,
        "episodes": args.episodes, "trial_episodes": args.trial_episodes,
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(), "modes": {}}
    reference = None
    for name, overrides in modes.items():
        start = time.perf_counter()
        policy = AdaptivePolicy.load(args.bundle, seed=args.seed)
        policy.safety = dataclasses.replace(policy.safety, **overrides)
        with policy:
            rows = [run_task(policy, env, task, i, args) for i, task in enumerate(tasks)]
        summary = summarise(rows, reference)
        if name == "today":
            reference = summary["mean_gain"]
        result["modes"][name] = {"safety": dataclasses.asdict(policy.safety),
                                 "summary": summary, "tasks": rows,
                                 "seconds": time.perf_counter() - start}
        print(f"{name:>8}: {summary['worse']}/{summary['tasks']} worse, mean gain "
              f"{summary['mean_gain']:.2f} (kept {summary['gain_kept']}), rolled back "
              f"{summary['rolled_back']}, halved {summary['halved']}, median KL "
              f"{summary['median_kl']:.3g}, worst {summary['worst_drop_in_se']:.2f} SE, "
              f"trial worse {summary['trial_worse']}", flush=True)
    env.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_adapt_safety.json").write_text(
        json.dumps(clean(result), indent=1) + "\n")
    plot(result, args.out / "bench_adapt_safety.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
