"""The state of one sample call: the episodes being recorded (:class:`EpisodeBuffers`)
and what each slot is doing (:class:`SlotTable`). Plain numpy, filled by the sampler."""

from __future__ import annotations

import numpy as np
import torch

from metarobot.core.batch import EpisodeBatch


class EpisodeBuffers:
    """``E`` episodes of ``M`` tasks, padded to ``T`` steps: ``obs [M, E, T, O]``,
    ``act [M, E, T, A]``, ``logp`` and ``rew`` ``[M, E, T]``, ``length`` and ``success``
    ``[M, E]``. A *row* is the flat index ``(task * E + episode) * T + step``."""

    def __init__(self, num_tasks: int, num_eps: int, horizon: int, obs_dim: int,
                 act_dim: int) -> None:
        self.num_eps, self.horizon = num_eps, horizon
        self.obs = np.zeros((num_tasks, num_eps, horizon, obs_dim), np.float32)
        self.act = np.zeros((num_tasks, num_eps, horizon, act_dim), np.float32)
        self.logp = np.zeros((num_tasks, num_eps, horizon), np.float32)
        self.rew = np.zeros((num_tasks, num_eps, horizon), np.float32)
        self.length = np.zeros((num_tasks, num_eps), np.int64)
        self.success = np.zeros((num_tasks, num_eps), np.float32)

    def rows(self, task: np.ndarray, episode: np.ndarray, step: np.ndarray) -> np.ndarray:
        return (task * self.num_eps + episode) * self.horizon + step

    def record_actions(self, rows: np.ndarray, obs: np.ndarray, act: np.ndarray,
                       logp: np.ndarray) -> None:
        """The observations the policy saw at ``rows``, its actions and their log-probs."""
        self.obs.reshape(-1, self.obs.shape[-1])[rows] = obs
        self.act.reshape(-1, self.act.shape[-1])[rows] = act
        self.logp.reshape(-1)[rows] = logp

    def finish(self, task: int, episode: int, steps: int, succeeded: bool) -> None:
        """Episode ``(task, episode)`` ended after ``steps`` steps."""
        self.length[task, episode], self.success[task, episode] = steps, float(succeeded)
        # Clear what a run of this episode on a worker that died may have left.
        self.obs[task, episode, steps:], self.act[task, episode, steps:] = 0.0, 0.0
        self.logp[task, episode, steps:], self.rew[task, episode, steps:] = 0.0, 0.0

    def to_batch(self, device: torch.device) -> EpisodeBatch:
        mask = (np.arange(self.horizon) < self.length[..., None]).astype(np.float32)

        def out(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array).to(device)

        return EpisodeBatch(out(self.obs), out(self.act), out(self.rew), out(mask),
                            out(self.logp), out(self.success))


class SlotTable:
    """What each of ``S`` slots (envs) does: the (task, episode) it runs (-1: idle), its
    step, its current observation and next action, and the task it last started in this
    call. (Not the task its env kept from an earlier call: the assignment must not depend
    on history for the batch to be reproducible.)"""

    def __init__(self, num_slots: int, obs_dim: int, act_dim: int) -> None:
        self.env_task = [-1] * num_slots
        self.task = np.full(num_slots, -1)
        self.episode = np.full(num_slots, -1)
        self.t = np.zeros(num_slots, np.int64)
        self.obs = np.zeros((num_slots, obs_dim), np.float32)
        self.act = np.zeros((num_slots, act_dim), np.float32)

    def any_running(self) -> bool:
        return bool((self.task >= 0).any())

    def start(self, slot: int, job: tuple[int, int], obs: np.ndarray) -> None:
        self.task[slot], self.episode[slot] = job
        self.t[slot], self.obs[slot] = 0, obs
        self.env_task[slot] = self.task[slot]

    def stop(self, slots: slice | int) -> None:
        self.task[slots] = self.episode[slots] = -1
