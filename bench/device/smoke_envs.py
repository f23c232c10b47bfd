"""Smoke check of the task families against whatever ``pybullet_data`` is importable.

Builds each family's gymnasium env, sets train and test tasks (for grasp: every object of
the catalogue), resets and steps a few times. Exits nonzero on the first failure. Used by
``bench/device/setup.sh`` (the trimmed ``pybullet_data`` of ``.device/``) and by hand::

    python bench/device/smoke_envs.py [--steps 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import gymnasium as gym
import numpy as np
import pybullet_data

import sim_envs
from sim_envs.objects import CATALOGUE


def run_task(env: gym.Env, task: sim_envs.Task, steps: int, seed: int) -> None:
    env.unwrapped.set_task(task)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        action = rng.uniform(-1.0, 1.0, env.action_space.shape).astype(np.float32)
        obs, reward, terminated, truncated, _ = env.step(action)
        if not (np.all(np.isfinite(obs)) and np.isfinite(reward)):
            raise RuntimeError(f"non-finite observation or reward on {task}")
        if terminated or truncated:
            obs, _ = env.reset(seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    start = time.perf_counter()
    checked = {}
    for name in sim_envs.FAMILY_NAMES:
        family = sim_envs.make_family(name)
        env = gym.make(sim_envs.env_id(name))
        tasks = (family.sample_tasks(3, split="train", seed=0)
                 + family.sample_tasks(3, split="test", seed=1))
        if name == "grasp":  # every catalogue object, train and held-out
            base = tasks[0].params
            tasks += [family.make_task(dataclasses.replace(base, shape=shape))
                      for shape in CATALOGUE]
        for i, task in enumerate(tasks):
            run_task(env, task, args.steps, seed=i)
        env.close()
        checked[name] = len(tasks)
    print(f"smoke_envs: ok {checked} tasks, {args.steps} steps each, "
          f"pybullet_data={pybullet_data.getDataPath()} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    sys.exit(main())
