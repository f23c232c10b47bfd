"""How hard is walking to learn? SB3 PPO on one walk task, with and without the gait generator.

One fixed training task of the walk family (the first forward one of the train split,
seed 0, or with ``--heading backward`` the first backward one), so nothing is hidden:
this measures how hard walking itself is to learn, not adaptation. For each setting
(``gait_generator`` off and on, or one of them with ``--gait``) SB3 PPO with the multi-task
baseline's settings (``bench/baselines.py``: 2 envs, VecNormalize, a 64x64 MLP, initial
log-std -1 as in ``walk-cpu``) trains for ``--steps`` env steps; every ``--eval-every``
steps its deterministic policy runs ``--eval-episodes`` episodes of the same task:
return, success (the base covers 1 m of the commanded direction in 4 s without a fall)
and distance along the command (m).

With ``--multitask-observed`` it measures instead the step the meta-trainer faces on the
walk family, minus the inference: SB3 multi-task PPO (``bench/baselines.py``'s baseline
(a), 1 env, initial log-std -1) on fresh training tasks of both directions with the
direction **observed** (``observe_command=True``), evaluated every ``--eval-every`` steps
on 4 training tasks (2 forward, 2 backward, task seed 5), one deterministic episode each.

With ``--evaluate-runs RUN [RUN ...]`` it evaluates walk runs of the meta-trainer on the
same 4 tasks: their pre-update policy, no adaptation (with the direction hidden it cannot
walk both ways), with the mean action (deterministic) and with the policy's own action
noise (stochastic, as in training and in the adaptation episodes), ``--eval-episodes``
episodes each.

Usage::

    python -m bench.gait_learnability                 # 2 x 300k steps, about 15 min on 2 cores
    python -m bench.gait_learnability --multitask-observed --steps 500000 --eval-every 100000
    python -m bench.gait_learnability --evaluate-runs runs/A runs/B --eval-episodes 4
    python -m bench.gait_learnability --heading backward --gait off --steps 200000

Writes ``bench/results/gait/gait_learnability.json`` and ``.png``
(``gait_learnability_backward.*`` with ``--heading backward``;
``multitask_observed.json`` and ``.png`` with ``--multitask-observed``,
``meta_runs.json`` with ``--evaluate-runs``).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
import yaml

from bench import baselines
from bench.common import REPO, write_json
from bench.results import provenance
from metarobot.training.runlog import read_log
from sim_envs.registry import env_id, make_family
from sim_envs.tasks import Task

OUT = REPO / "bench" / "results" / "gait"


#: ``--heading``: the walk family's two directions (rad).
HEADING_NAMES = {"forward": 0.0, "backward": math.pi}


def first_task(heading: float = 0.0) -> Task:
    """The first train task of the walk family (seed 0) with this heading."""
    tasks = make_family("walk").sample_tasks(20, "train", seed=0)
    return next(t for t in tasks if t.params.heading == heading)


class _StandStill:
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        return np.zeros(12, dtype=np.float32)


def standing_return(task: Task) -> float:
    """Return of one episode standing still (the zero action) on ``task``."""
    env = baselines.make_env("walk")
    try:
        return float(baselines.evaluate_on_task(_StandStill(), env, task, 1,
                                                seed=0).returns[0])
    finally:
        env.close()


def evaluate(policy: baselines.SB3Policy, env: gymnasium.Env, task: Task, episodes: int,
             seed: int) -> dict[str, float]:
    """Deterministic episodes of ``task``: mean return, success and distance along the
    command (m)."""
    with torch.random.fork_rng():  # evaluate_on_task seeds torch; training's RNG goes on
        stats = baselines.evaluate_on_task(policy, env, task, episodes, seed,
                                           deterministic=True)
    return {"return": float(stats.returns.mean()), "success": float(stats.success.mean()),
            "progress_m": float(np.mean([info["progress"] for info in stats.final_infos]))}


def learning_curve(task: Task, gait: bool, steps: int, eval_every: int, episodes: int,
                   seed: int) -> list[dict[str, float]]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    kwargs = {"gait_generator": True} if gait else {}
    venv = VecNormalize(DummyVecEnv([baselines._fixed_task_env_fn("walk", task, kwargs)
                                     for _ in range(2)]), gamma=0.99)
    model = PPO("MlpPolicy", venv, seed=seed, verbose=0, **baselines.MULTITASK_PPO,
                policy_kwargs={"net_arch": [64, 64], "log_std_init": -1.0})
    policy = baselines.SB3Policy(model, venv)
    env = gymnasium.make(env_id("walk"), **kwargs)
    curve = []
    t0 = time.perf_counter()
    try:
        for done_steps in range(eval_every, steps + 1, eval_every):
            model.learn(eval_every, reset_num_timesteps=False)
            point = {"env_steps": done_steps,
                     **evaluate(policy, env, task, episodes, seed=1000)}
            curve.append(point)
            print(f"gait_generator={gait}: {done_steps:>7} steps  return {point['return']:6.1f}"
                  f"  success {point['success']:.2f}  progress {point['progress_m']:.2f} m"
                  f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        env.close()
        venv.close()
    return curve


def observed_eval_tasks() -> list[Task]:
    """2 forward and 2 backward walk training tasks (task seed 5)."""
    tasks = make_family("walk").sample_tasks(20, "train", seed=5)
    return ([t for t in tasks if t.params.heading == 0.0][:2]
            + [t for t in tasks if t.params.heading != 0.0][:2])


class MetaRunPolicy:
    """A meta-trainer run's pre-update policy with :class:`baselines.SB3Policy`'s ``act``."""

    def __init__(self, run_dir: Path) -> None:
        from metarobot.training.evaluate import load_trained_policy

        self.trained = load_trained_policy(run_dir)

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        from metarobot.core.policy import policy_forward

        with torch.no_grad():
            mean, log_std = policy_forward(self.trained.model, self.trained.params,
                                           torch.as_tensor(obs, dtype=torch.float32))
            if not deterministic:
                mean = mean + torch.exp(log_std) * torch.randn(mean.shape)
        return mean.numpy()


#: Training scalars of a run summarised by :func:`training_summary`.
TRAINING_KEYS = ("return/pre", "return/post", "success/pre", "success/post", "outer/kl",
                 "outer/entropy", "baseline/explained_variance_post",
                 "inner/adaptation_kl_mean")


def training_summary(run: Path, last: int = 10) -> dict[str, Any]:
    """Means over the run's last ``last`` iterations of :data:`TRAINING_KEYS` (training
    batches, not evaluations) and the env steps at the end."""
    records = list(read_log(run).values())[-last:]
    if not records:
        raise ValueError(f"{run}: no iterations in log.jsonl")
    return {"iterations": [records[0]["iteration"], records[-1]["iteration"]],
            "env_steps": records[-1]["env_steps"],
            **{k: float(np.mean([r[k] for r in records])) for k in TRAINING_KEYS
               if all(k in r for r in records)}}


def evaluate_meta_runs(runs: list[Path], episodes: int) -> list[dict[str, Any]]:
    """Deterministic and stochastic returns of each run's policy on the observed-direction
    evaluation tasks, with :func:`training_summary` of its log."""
    out = []
    for run in runs:
        policy = MetaRunPolicy(run)
        config = policy.trained.config
        if config.family != "walk":
            raise ValueError(f"{run}: need a walk run, got family {config.family!r}")
        env = gymnasium.make(env_id("walk"), **config.env_kwargs)
        tasks = observed_eval_tasks()
        try:
            row: dict[str, Any] = {"run": str(run), "iteration": policy.trained.iteration,
                                   "training": training_summary(run),
                                   # as the run wrote it (keys added since keep no default)
                                   "config": yaml.safe_load((run / "config.yaml").read_text())}
            for mode in ("deterministic", "stochastic"):
                per_task = []
                for i, task in enumerate(tasks):
                    stats = baselines.evaluate_on_task(policy, env, task, episodes, seed=7 + i,
                                                       deterministic=mode == "deterministic")
                    per_task.append({
                        "heading": task.params.heading, "return": float(stats.returns.mean()),
                        "success": float(stats.success.mean()),
                        "progress_m": float(np.mean([f["progress"] for f in stats.final_infos]))})
                row[mode] = per_task
                print(f"{run} (iteration {row['iteration']}) {mode:>13}: " + "  ".join(
                    f"{'fwd' if t['heading'] == 0.0 else 'back'} {t['return']:.0f} "
                    f"({t['progress_m']:+.2f} m)" for t in per_task), flush=True)
        finally:
            env.close()
        out.append(row)
    return out


def multitask_observed_curve(steps: int, eval_every: int, seed: int
                             ) -> tuple[list[Task], list[dict[str, Any]]]:
    """Multi-task PPO on walk with the direction observed; per-task deterministic returns."""
    kwargs = {"observe_command": True}
    chosen = observed_eval_tasks()
    env = gymnasium.make(env_id("walk"), **kwargs)
    policy, curve = None, []
    t0 = time.perf_counter()
    try:
        for done_steps in range(eval_every, steps + 1, eval_every):
            policy = baselines.train_multitask_ppo("walk", done_steps, seed=seed, init=policy,
                                                   n_envs=1, env_kwargs=kwargs,
                                                   log_std_init=-1.0)
            per_task = [{"heading": task.params.heading,
                         **evaluate(policy, env, task, episodes=1, seed=7)}
                        for task in chosen]
            curve.append({"env_steps": done_steps, "tasks": per_task})
            print(f"multi-task, direction observed: {done_steps:>7} steps  "
                  + "  ".join(f"{'fwd' if t['heading'] == 0.0 else 'back'} "
                              f"{t['return']:.0f} ({t['progress_m']:.2f} m)" for t in per_task)
                  + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        env.close()
    return chosen, curve


def plot_multitask(data: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    x = [p["env_steps"] for p in data["curve"]]
    for i in range(len(data["tasks"])):
        heading = data["curve"][0]["tasks"][i]["heading"]
        ax.plot(x, [p["tasks"][i]["progress_m"] for p in data["curve"]], marker="o",
                ls="-" if heading == 0.0 else "--",
                label=f"task {i + 1} ({'forward' if heading == 0.0 else 'backward'})")
    ax.axhline(1.0, color="grey", ls=":", label="success distance")
    ax.set(xlabel="PPO env steps (thousands)", ylabel="distance along the command (m)",
           title="SB3 multi-task PPO on walk, direction observed")
    ax.xaxis.set_major_formatter(lambda value, _: f"{value / 1000:.0f}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, curve in data["curves"].items():
        x = [p["env_steps"] for p in curve]
        axes[0].plot(x, [p["return"] for p in curve], marker="o", label=name)
        axes[1].plot(x, [p["progress_m"] for p in curve], marker="o", label=name)
    axes[0].axhline(data["standing_return"], color="grey", ls="--", label="standing still")
    axes[1].axhline(1.0, color="grey", ls="--", label="success distance")
    axes[0].set(xlabel="PPO env steps (thousands)", ylabel="return (deterministic)")
    axes[1].set(xlabel="PPO env steps (thousands)", ylabel="distance along the command (m)")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.xaxis.set_major_formatter(lambda value, _: f"{value / 1000:.0f}")
    direction = "forward" if data["task"]["params"]["heading"] == 0.0 else "backward"
    fig.suptitle(f"SB3 PPO on one walk task ({direction}): "
                 + ", ".join(data["curves"]), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300_000, help="PPO env steps per setting")
    p.add_argument("--eval-every", type=int, default=50_000, help="env steps between evals")
    p.add_argument("--eval-episodes", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--heading", choices=sorted(HEADING_NAMES), default="forward",
                   help="the single task's direction (backward: writes "
                   "gait_learnability_backward.json)")
    p.add_argument("--gait", choices=["off", "on", "both"], default="both",
                   help="train without the gait generator, with it, or both")
    p.add_argument("--multitask-observed", action="store_true",
                   help="multi-task PPO on walk with the direction observed (see above)")
    p.add_argument("--evaluate-runs", type=Path, nargs="+", metavar="RUN",
                   help="evaluate meta-trainer runs on the observed-direction tasks")
    args = p.parse_args(argv)
    if min(args.steps, args.eval_every, args.eval_episodes) < 1 or args.eval_every > args.steps:
        p.error("--steps, --eval-every and --eval-episodes must be >= 1, eval-every <= steps")
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.evaluate_runs:
        rows = evaluate_meta_runs(args.evaluate_runs, args.eval_episodes)
        write_json(args.out / "meta_runs.json", {"episodes": args.eval_episodes,
                                                 "runs": rows, **provenance()})
        print(f"wrote {args.out / 'meta_runs.json'}")
        return
    if args.multitask_observed:
        tasks, curve = multitask_observed_curve(args.steps, args.eval_every, args.seed)
        data = {"tasks": [t.to_dict() for t in tasks], "seed": args.seed,
                "ppo": baselines.MULTITASK_PPO, "curve": curve, **provenance()}
        write_json(args.out / "multitask_observed.json", data)
        plot_multitask(data, args.out / "multitask_observed.png")
        print(f"wrote {args.out / 'multitask_observed.json'} and .png")
        return
    task = first_task(HEADING_NAMES[args.heading])
    curves = {}
    for gait in {"off": (False,), "on": (True,), "both": (False, True)}[args.gait]:
        curves[f"gait_generator={gait}"] = learning_curve(
            task, gait, args.steps, args.eval_every, args.eval_episodes, args.seed)
    data = {"task": task.to_dict(), "seed": args.seed, "ppo": baselines.MULTITASK_PPO,
            "standing_return": standing_return(task), "curves": curves,
            **provenance()}
    name = "gait_learnability" + ("" if args.heading == "forward" else f"_{args.heading}")
    write_json(args.out / f"{name}.json", data)
    plot(data, args.out / f"{name}.png")
    print(f"wrote {args.out / name}.json and .png")


if __name__ == "__main__":
    main()
