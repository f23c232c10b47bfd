"""Is the locomotion family learnable? SB3 PPO, domain-randomised, on the training tasks.

Issue 18's "learnability first": before meta-training, check that a plain learner with the
same observations walks. SB3 PPO trains on the family's training distribution (a fresh
training task at every reset, legged_gym's domain randomisation; the command is drawn per
episode by the env), in resumable chunks. After each chunk it is evaluated on held-out
test tasks, and the same tasks are run with the zero action (standing still), so the
report shows, per terrain type and per held-out factor:

* success and return of the PPO policy (stochastic actions, as every evaluation here);
* the return of standing still, and its ratio to the policy's return (issue 18's reward
  target: at most 0.2).

Run (resumable: the model is saved after every chunk; rerun the same command to go on)::

    python -m bench.locomotion_learnability --steps 2000000 --n-envs 2 \
        --out bench/results/locomotion_learnability

Writes ``learnability.json`` (curve and the last evaluation's tables), ``learnability.png``
(success and return against env steps) and ``model/`` (the SB3 policy) under ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import baselines
from bench.common import read_json, write_json
from bench.results import provenance
from sim_envs.locomotion import held_out_factors
from sim_envs.tasks import Task

#: PPO settings: legged_gym's (5 epochs, 4 minibatches, lr 3e-4 fixed, gamma 0.99,
#: lambda 0.95, clip 0.2), with the rollout sized for a few CPU envs.
PPO_SETTINGS: dict[str, Any] = {"n_steps": 1024, "batch_size": 512, "n_epochs": 5,
                                "learning_rate": 3e-4, "gamma": 0.99, "gae_lambda": 0.95,
                                "clip_range": 0.2, "ent_coef": 0.0}


class ZeroPolicy:
    """Standing still: the zero action (the standing pose's joint targets)."""

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        return np.zeros(12, dtype=np.float32)


def task_groups(task: Task) -> list[str]:
    """The report rows a test task counts in: its terrain type and its held-out factors."""
    return [f"terrain={task.params.terrain}"] + [
        f"held out: {f}" for f in held_out_factors(task.params)]


def evaluate(policy: Any, tasks: list[Task], episodes: int, seed: int,
             env_kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """Per task: mean return and success of ``policy`` and of standing still."""
    env = baselines.make_env("locomotion", env_kwargs)
    rows = []
    try:
        for i, task in enumerate(tasks):
            ours = baselines.evaluate_on_task(policy, env, task, episodes, seed + 100 * i)
            still = baselines.evaluate_on_task(ZeroPolicy(), env, task, episodes,
                                               seed + 100 * i)
            rows.append({"task_id": task.task_id, "params": task.params.to_dict(),
                         "groups": task_groups(task),
                         "return": float(ours.returns.mean()),
                         "success": float(ours.success.mean()),
                         "standing_return": float(still.returns.mean()),
                         "standing_success": float(still.success.mean())})
    finally:
        env.close()
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean return, success, standing-still return and their ratio, per group and in all."""
    groups: dict[str, list[dict[str, Any]]] = {"all": rows}
    for row in rows:
        for g in row["groups"]:
            groups.setdefault(g, []).append(row)
    out = {}
    for name in sorted(groups):
        g = groups[name]
        ret = float(np.mean([r["return"] for r in g]))
        still = float(np.mean([r["standing_return"] for r in g]))
        out[name] = {"tasks": len(g), "return": ret,
                     "success": float(np.mean([r["success"] for r in g])),
                     "standing_return": still,
                     "standing_ratio": still / ret if ret > 0 else float("nan")}
    return out


def print_summary(summary: dict[str, dict[str, float]]) -> None:
    print(f"{'group':<24} {'tasks':>5} {'return':>8} {'success':>8} {'standing':>9} "
          f"{'ratio':>6}")
    for name, s in summary.items():
        print(f"{name:<24} {s['tasks']:>5} {s['return']:>8.1f} {s['success']:>8.2f} "
              f"{s['standing_return']:>9.1f} {s['standing_ratio']:>6.2f}")


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["env_steps"] / 1e3 for p in data["curve"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(steps, [p["summary"]["all"]["success"] for p in data["curve"]], "o-", label="all")
    for name in ("terrain=flat", "held out: terrain", "held out: payload", "held out: leg"):
        ys = [p["summary"].get(name, {}).get("success", np.nan) for p in data["curve"]]
        a.plot(steps, ys, ".--", label=name)
    a.set_xlabel("env steps (thousands)")
    a.set_ylabel("success on test tasks")
    a.set_ylim(-0.02, 1.02)
    a.legend(fontsize=7)
    b.plot(steps, [p["summary"]["all"]["return"] for p in data["curve"]], "o-",
           label="SB3 PPO")
    b.plot(steps, [p["summary"]["all"]["standing_return"] for p in data["curve"]], "k:",
           label="standing still")
    b.set_xlabel("env steps (thousands)")
    b.set_ylabel("return on test tasks")
    b.legend(fontsize=7)
    fig.suptitle("Locomotion: SB3 PPO on the training distribution, held-out test tasks")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2_000_000, help="total env steps")
    parser.add_argument("--chunk", type=int, default=250_000,
                        help="env steps between saves and evaluations")
    parser.add_argument("--n-envs", type=int, default=2)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    parser.add_argument("--tasks", type=int, default=24, help="test tasks evaluated")
    parser.add_argument("--episodes", type=int, default=3, help="episodes per test task")
    parser.add_argument("--gait-generator", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                        help="start no chunk that the last chunk's duration says would end "
                        "after this many seconds (for time-boxed machines)")
    parser.add_argument("--out", type=Path,
                        default=Path("bench/results/locomotion_learnability"))
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    env_kwargs = {"gait_generator": True} if args.gait_generator else {}
    json_path, model_dir = args.out / "learnability.json", args.out / "model"
    data = read_json(json_path) if json_path.exists() else {
        "settings": {"ppo": PPO_SETTINGS, "hidden": args.hidden, "n_envs": args.n_envs,
                     "env_kwargs": env_kwargs, "seed": args.seed, "tasks": args.tasks,
                     "episodes": args.episodes, "log_std_init": -1.0},
        "curve": []}
    tasks = baselines.held_out_tasks("locomotion", args.tasks, seed=args.seed)
    done = data["curve"][-1]["env_steps"] if data["curve"] else 0
    began, last_chunk_s = time.time(), 0.0
    while done < args.steps:
        if args.time_limit and time.time() - began + 1.1 * last_chunk_s > args.time_limit:
            print(f"stopping at {done} env steps: the next chunk would pass --time-limit")
            break
        target = min(done + args.chunk, args.steps)
        start = time.time()
        policy = baselines.train_multitask_ppo(
            "locomotion", target, seed=args.seed,
            init=model_dir if model_dir.exists() else None, n_envs=args.n_envs,
            hidden=args.hidden, ppo_kwargs=PPO_SETTINGS,
            env_kwargs=env_kwargs, log_std_init=-1.0)
        train_s = time.time() - start
        policy.save(model_dir)
        done = int(policy.model.num_timesteps)
        rows = evaluate(policy, tasks, args.episodes, seed=10_000, env_kwargs=env_kwargs)
        summary = summarise(rows)
        data["curve"].append({"env_steps": done, "train_seconds": train_s,
                              "eval_seconds": time.time() - start - train_s,
                              "summary": summary})
        data["last_tasks"] = rows
        data.update(provenance())
        write_json(json_path, data)
        plot(data, args.out / "learnability.png")
        last_chunk_s = time.time() - start
        print(f"--- {done} env steps, {train_s:.0f} s training")
        print_summary(summary)


if __name__ == "__main__":
    main()
