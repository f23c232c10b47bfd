"""RL2 trials on the sampler: a task's episodes on one slot, in order, with memory.

An RL2 trial is the ``E`` episodes of one task played one after the other by a recurrent
policy whose hidden state is carried across the episode boundaries. The sampler's
pipeline, workers, noise table, seeds and buffers are reused unchanged
(:class:`TrialCall` is a :class:`~metarobot.sampling.sampler._SampleCall` with three hooks
replaced); what differs:

* **Scheduling** (:class:`TrialJobQueue`): a slot that starts a task's first episode owns
  the whole trial: it takes the task's next episode each time one ends, and no other slot
  takes any of them. A free slot starts a task none has started (the lowest index).
  So the episodes of a task run on one slot, in order, and the batch is a function of the
  inputs alone, as for :meth:`~metarobot.sampling.sampler.MultiTaskSampler.sample`.
* **The policy call** (:meth:`TrialCall.act`): the hidden state is kept per task (``[M,
  H]``: a task's trial runs on one slot at a time, so this is the slot's state), zeroed
  at the first step of episode 0. The previous action, reward and episode-end flag are
  read back from the episode buffers (the trial's previous real step: the previous
  episode's last step at ``t = 0``), so the worker replies are handled as before.
* **A dead worker** (:meth:`TrialJobQueue.requeue_lost`): the state of a trial cut short
  is gone, so each of its trials is run again from episode 0, with the same seeds and
  noise, which gives the same episodes up to float rounding: the re-run steps share
  policy calls with other rows than before, and the GRU step's float32 rounding depends
  on a call's rows, with shared and with per-task parameters alike (not bit-identical,
  unlike :meth:`~metarobot.sampling.sampler.MultiTaskSampler.sample`'s per-task
  policy). ``tests/test_sampler.py::test_worker_killed_mid_trial_gives_the_undisturbed_trials``.

:func:`metarobot.algos.rl2.pack_trials` rebuilds exactly these inputs from the batch.
"""

from __future__ import annotations

import collections
import time

import numpy as np
import torch
from torch import Tensor

from metarobot.core.policy import LOG_STD_MAX, LOG_STD_MIN, Params
from metarobot.core.recurrent import GaussianGRUPolicy, RecurrentStep, recurrent_step
from metarobot.sampling.sampler import _SampleCall
from metarobot.sampling.schedule import JobQueue


class TrialJobQueue(JobQueue):
    """The (task, episode) jobs of one trial call; a task's episodes go to one slot.

    :meth:`take` continues the slot's own trial (``preferred_task``: the task the slot last
    started) while it has episodes left, else starts a fresh task (one with no episode
    handed out), else gives nothing: a slot never takes an episode of another slot's trial.
    """

    def __init__(self, num_tasks: int, episodes_per_task: int) -> None:
        super().__init__(num_tasks, episodes_per_task)
        self.episodes_per_task = episodes_per_task

    def take(self, preferred_task: int) -> tuple[int, int] | None:
        m = preferred_task
        if m < 0 or not self.pending[m]:
            fresh = [k for k, p in enumerate(self.pending) if len(p) == self.episodes_per_task]
            if not fresh:
                return None
            m = fresh[0]
        self.count -= 1
        return m, self.pending[m].popleft()

    def requeue_lost(self, jobs: list[tuple[int, int]]) -> None:
        """Run the trials of ``jobs`` again from their first episode."""
        for m in sorted({m for m, _ in jobs}):
            self.pending[m] = collections.deque(range(self.episodes_per_task))
        self.count = sum(len(p) for p in self.pending)


class TrialCall(_SampleCall):
    """One :meth:`~metarobot.sampling.sampler.MultiTaskSampler.sample_trials` call (see the
    module docstring)."""

    def setup_policy(self, model: GaussianGRUPolicy, params: Params) -> None:  # type: ignore[override]
        if not isinstance(model, GaussianGRUPolicy):
            raise ValueError(f"sample_trials needs a GaussianGRUPolicy, got {type(model).__name__}")
        self.model, self.params = model, params
        shared = all(bool((v == v[:1]).all()) for v in params.values())
        self.shared = {k: v[0] for k, v in params.items()} if shared else None
        num_tasks = next(iter(params.values())).shape[0]
        self.h = model.initial_state(num_tasks)  # [M, H]: each task's trial state

    def task_log_std(self, num_tasks: int) -> Tensor:
        return self.params["log_std"].clamp(LOG_STD_MIN, LOG_STD_MAX)

    def job_queue(self, num_tasks: int, num_eps: int) -> JobQueue:
        return TrialJobQueue(num_tasks, num_eps)

    def step(self, task: Tensor, obs: Tensor, prev_act: Tensor, prev_rew: Tensor,
             prev_done: Tensor, h: Tensor) -> RecurrentStep:
        """The policy for rows of tasks ``task [N]`` (all ``[N, ...]``)."""
        if self.shared is not None:
            return recurrent_step(self.model, self.shared, obs, prev_act, prev_rew, prev_done, h)
        rows = {k: v.index_select(0, task) for k, v in self.params.items()}
        return torch.func.vmap(lambda p, *x: recurrent_step(self.model, p, *x))(
            rows, obs, prev_act, prev_rew, prev_done, h)

    def previous_step(self, task: np.ndarray, ep: np.ndarray, t: np.ndarray,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(prev_act [N, A], prev_rew [N], prev_done [N])`` of the trial's previous real
        step (zeros at a trial's first step)."""
        buf = self.episodes
        has_prev = (t > 0) | (ep > 0)
        prev_ep = np.where(t > 0, ep, ep - 1)
        prev_len = buf.length[task, np.maximum(ep - 1, 0)]
        prev_t = np.where(t > 0, t - 1, prev_len - 1)
        act = np.where(has_prev[:, None], buf.act[task, prev_ep, prev_t], 0.0)
        rew = np.where(has_prev, buf.rew[task, prev_ep, prev_t], 0.0)
        done = ((t == 0) & (ep > 0)).astype(np.float32)
        return act.astype(np.float32), rew.astype(np.float32), done

    def act(self, running: np.ndarray) -> None:
        """One batched recurrent policy call for the slots in ``running``."""
        policy_start = time.perf_counter()
        slots, device, A = self.slots, self.sampler.device, self.sampler.act_dim
        task, ep, t = slots.task[running], slots.episode[running], slots.t[running]
        row = self.episodes.rows(task, ep, t)
        prev = [torch.as_tensor(x, device=device) for x in self.previous_step(task, ep, t)]
        index = torch.as_tensor(np.stack([task, row]), device=device)
        starts = index[0][torch.as_tensor((ep == 0) & (t == 0), device=device)]
        self.h[starts] = 0.0
        obs = torch.as_tensor(slots.obs[running], device=device)
        out = self.step(index[0], obs, *prev, self.h[index[0]])
        self.h[index[0]] = out.h
        both = torch.cat([out.mean + self.offset[index[1]], self.logp_table[index[1], None]], 1)
        both = both.float().cpu().numpy()
        self.stats["policy_seconds"] += time.perf_counter() - policy_start
        self.stats["policy_calls"] += 1
        self.episodes.record_actions(row, slots.obs[running], both[:, :A], both[:, A])
        slots.act[running] = both[:, :A]

    def worker_died(self, w: int, reason: str) -> None:
        """As for episodes, and the dead worker's envs forget their tasks: their trials
        restart from episode 0 on whichever slot takes them first."""
        super().worker_died(w, reason)
        per = self.sampler.envs_per_worker
        for s in range(w * per, (w + 1) * per):
            self.slots.env_task[s] = -1
