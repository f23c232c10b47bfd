"""Which slot runs which episode, and when: the job queue of one sample call, the
pipeline's groups of envs, and the reset seed of each episode (see
:mod:`metarobot.sampling.sampler` for how they are used)."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np


class JobQueue:
    """The pending (task, episode) jobs of one sample call.

    :meth:`take` prefers the given task (the one the slot's env simulates: no
    ``set_task``), else the task with the most pending episodes, which spreads the first
    wave of slots evenly over the tasks so each slot then stays on its task.
    """

    def __init__(self, num_tasks: int, episodes_per_task: int) -> None:
        self.pending = [collections.deque(range(episodes_per_task)) for _ in range(num_tasks)]
        self.count = num_tasks * episodes_per_task

    def __len__(self) -> int:
        return self.count

    def take(self, preferred_task: int) -> tuple[int, int] | None:
        if self.count == 0:
            return None
        m = preferred_task
        if m < 0 or not self.pending[m]:
            m = max(range(len(self.pending)), key=lambda k: len(self.pending[k]))
        self.count -= 1
        return m, self.pending[m].popleft()

    def put_back(self, jobs: list[tuple[int, int]]) -> None:
        for m, e in sorted(jobs, reverse=True):  # keeps each task's episodes in order
            self.pending[m].appendleft(e)
            self.count += 1

    def requeue_lost(self, jobs: list[tuple[int, int]]) -> None:
        """Jobs lost with a dead worker (running or about to start): run them again."""
        self.put_back(jobs)


@dataclasses.dataclass
class Group:
    """Envs ``lo..hi-1`` of worker ``worker`` (the sampler's slots ``slots``): they step
    together, one message at a time, while the main process handles other groups."""

    worker: int
    lo: int
    hi: int
    slots: slice
    seq: int | None = None  # the step message whose reply is due
    starts: list[tuple[int, int] | None] | None = None  # its (task, episode) jobs, per env


def reset_seed(seed: int, task_index: int, episode: int) -> int:
    """The env reset seed of episode ``episode`` of task ``task_index`` in a call with ``seed``."""
    return int(np.random.SeedSequence([seed, task_index, episode]).generate_state(1)[0])




def pipeline_groups(num_workers: int, envs_per_worker: int) -> list[list[Group]]:
    """The pipeline's stages in their fixed order: each worker's envs are split in two
    groups (a worker with one env has one), stage 0 holds the first group of every
    worker, stage 1 the second, so a worker steps one group while the main process
    handles the other. (One stage per group would cost a policy call per group.)"""
    per = envs_per_worker
    halves = [(0, per)] if per == 1 else [(0, per // 2), (per // 2, per)]
    return [[Group(w, lo, hi, slice(w * per + lo, w * per + hi)) for w in range(num_workers)]
            for lo, hi in halves]
