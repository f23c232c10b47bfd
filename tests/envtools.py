"""Helpers shared by the env tests (a plain module: pytest puts ``tests/`` on the path)."""
from __future__ import annotations

import gymnasium as gym
import numpy as np


def trace(env: gym.Env, actions: np.ndarray, seed: int) -> np.ndarray:
    """Every observation and reward of ``actions`` played from ``reset(seed)``, as one flat
    array, for bit-for-bit comparisons of two envs (or one env before and after a change)."""
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for action in actions:
        obs, reward, *_ = env.step(action)
        out.append(np.append(obs, reward))
    return np.concatenate(out)
