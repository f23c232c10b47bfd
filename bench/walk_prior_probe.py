"""How a direction-observing walker (``bench/walk_skill_prior.py``'s pretraining) walks
each way on walk's held-out test tasks: with its own command, and with the command held at
its first value for the whole episode, the way a constant latent context would give it.

The second is the ceiling of the warm-started meta-policy: its context is constant over an
episode, so a gait that needs the command to turn with the robot is out of its reach. Per
heading: success, distance along the heading (m) and the final |yaw| (rad), with the mean
action, ``--episodes`` resets per task.

Usage: ``python -m bench.walk_prior_probe RUNS/walk-prior/seed0 --tasks 10 --out OUT.json``
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from bench.common import command_line, write_json
from metarobot.core.policy import policy_forward
from metarobot.training.evaluate import TrainedPolicy, load_trained_policy
from sim_envs.registry import env_id, make_family
from sim_envs.tasks import Task
from sim_envs.walk import HEADINGS


def walk_episode(policy: TrainedPolicy, env: gym.Env, task: Task, seed: int,
                 hold_command: bool) -> dict[str, float]:
    """One episode with the mean action: success, distance along the heading, final |yaw|."""
    base = env.unwrapped
    base.set_task(task)
    obs, _ = env.reset(seed=seed)
    dims = base.task_obs_size
    first_command = obs[-dims:].copy()
    success, info = False, {}
    while True:
        if hold_command:
            obs = obs.copy()
            obs[-dims:] = first_command
        with torch.no_grad():
            mean, _ = policy_forward(policy.model, policy.params, torch.as_tensor(obs)[None])
        obs, _, terminated, truncated, info = env.step(mean[0].numpy())
        success |= bool(info["success"])
        if terminated or truncated:
            break
    return {"success": float(success), "distance": float(info["progress"]),
            "abs_yaw": abs(float(base.yaw))}


def probe(policy: TrainedPolicy, tasks: int, episodes: int, seed: int) -> dict[str, Any]:
    """Per heading and command mode, the mean of :func:`walk_episode`'s figures."""
    env_kwargs = policy.config.env_kwargs
    if not env_kwargs.get("observe_command"):
        raise SystemExit("not a direction-observing walker (env_kwargs.observe_command)")
    env = gym.make(env_id("walk"), **env_kwargs)
    held_out = make_family("walk").sample_tasks(tasks, "test", seed=seed)
    out: dict[str, Any] = {}
    try:
        for mode, hold in (("own command", False), ("command held", True)):
            for heading in HEADINGS:
                rows = [walk_episode(policy, env, task, 1000 * i + e, hold)
                        for i, task in enumerate(held_out) if task.params.heading == heading
                        for e in range(episodes)]
                key = f"{mode}, {'forward' if heading == 0 else 'backward'}"
                out[key] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
                out[key]["episodes"] = len(rows)
    finally:
        env.close()
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="the pretraining's run directory")
    p.add_argument("--tasks", type=int, default=10, help="held-out test tasks")
    p.add_argument("--episodes", type=int, default=2, help="resets per task")
    p.add_argument("--seed", type=int, default=0, help="seed of the test tasks")
    p.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    args = p.parse_args(argv)
    if args.tasks < 2 or args.episodes < 1:
        p.error("--tasks must be >= 2 and --episodes >= 1")
    policy = load_trained_policy(args.run)
    figures = probe(policy, args.tasks, args.episodes, args.seed)
    for key, row in figures.items():
        print(f"{key:28s} success {row['success']:.2f}  distance {row['distance']:+.2f} m  "
              f"|yaw| {row['abs_yaw']:.2f} rad ({row['episodes']} episodes; pi = "
              f"{math.pi:.2f})")
    write_json(args.out, {"command": command_line(argv), "run": str(args.run),
                          "iteration": policy.iteration, "env_kwargs": policy.config.env_kwargs,
                          "figures": figures})


if __name__ == "__main__":
    main()
