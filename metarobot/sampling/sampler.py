"""Parallel multi-task episode sampler: envs in worker processes, batched policy calls.

:class:`MultiTaskSampler` collects ``E`` episodes for each of ``M`` tasks, every task with
its own policy parameters (the stacked dict ``params`` has a leading task dim ``M``).

How one :meth:`MultiTaskSampler.sample` call runs:

* ``num_workers`` worker processes each hold ``envs_per_worker`` envs (``num_workers=0``:
  the envs run in this process, same code path). Every env is a *slot*.
* The ``M * E`` (task, episode) jobs wait in a queue; a free slot takes the next episode
  of the task its env already simulates, else one of the task with the most episodes left
  (``set_task`` rebuilds part of the scene and costs milliseconds, so it is called only
  when the env's task changes). The env is reset with a seed derived from
  ``(seed, task index, episode index)``.
* The envs step in a two-stage pipeline (double buffering). Each worker's envs are split
  into two halves, *groups* (a worker with one env has one group); stage 0 handles the
  first half of every worker, stage 1 the second. A stage receives the step replies of
  its groups (rewards, episode ends, started jobs), runs the policy once on ``device``,
  batched over the stage's running slots, and sends each of its groups one message with
  its envs' actions (and the jobs to start). While the main process handles one stage,
  the workers step the other half, so the workers do not wait for the policy call and the
  message round trip (up to two messages per worker in flight, answered in order). A slot
  whose episode ends is reset for its next job within the same message, so no step is
  spent idle between episodes.
* The policy call: each slot's parameters are gathered from the stacked dict by its task
  index, one batched matmul per slot (:func:`~metarobot.core.policy.rows_policy_forward`;
  when every task has the same parameters, as for pre-update sampling, one plain matmul).
  The log-std does not depend on the observation, so the actions' offsets from the mean
  and their log-probabilities are computed for the whole call up front.

Determinism: the Gaussian action noise is drawn from ``generator`` once per call as a
``[M, E, T, A]`` tensor, indexed by (task, episode, step), and reset seeds depend only on
``(seed, task, episode)``. So a batch depends on ``seed``, the generator state and the
parameters, not on timing: the stages run in a fixed order, each waits for all of its
groups' replies, so the schedule and the slot assignment are a function of the inputs
and the configuration alone, and the same inputs give a bit-identical batch (also from
a fresh sampler, e.g. after resuming training). Across different worker counts or envs
per worker, or after a worker restart re-ran episodes on other slots, the episodes get
the same seeds and noise, and agree up to the float rounding of the policy evaluated in
different batch layouts: bit-identical on CPU with per-task parameters (a batched
matmul per slot); with shared parameters the plain matmul's float32 rounding can depend
on the number of rows.

The pieces: worker processes and their handles in :mod:`~metarobot.sampling.workers`, the
job queue, pipeline groups and reset seeds in :mod:`~metarobot.sampling.schedule`, the
episode buffers and slot table in :mod:`~metarobot.sampling.buffers`; one call's pipeline
loop is :class:`_SampleCall`.

Workers are started with ``spawn`` by default, so a script that creates a sampler with
workers needs the usual ``if __name__ == "__main__":`` guard.

Backends: ``"local"`` runs the workers as processes of this machine; ``"ray"`` runs the
same worker code (:class:`~metarobot.sampling.workers.EnvGroup`) as Ray actors, one per
worker, on a Ray cluster or a local Ray instance (:mod:`~metarobot.sampling.ray_workers`).
The pipeline, the schedule and the policy calls here are the same, so both backends give
the same batch for the same inputs and layout. The tasks, the one value every worker
receives per call, go to the object store once (``ray.put``); the policy runs here, so
what crosses to the actors per step is actions.

Failures: a worker that dies (segfault, SIGKILL: pipe EOF or process sentinel; a Ray
actor: killed, crashed or its node lost) or does not answer within ``step_timeout`` is
killed and replaced by a fresh worker (a new actor). The running
episodes of both its groups and the jobs its outstanding messages were to start go back to
the queue (those messages are forgotten, never read from the new worker), and the
episodes are re-run from reset with the same reset seeds and the same noise, so the batch
equals the one an undisturbed run would give. Each death and restart is appended to
:attr:`MultiTaskSampler.events` and reported through ``logger``.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from metarobot.core.batch import EpisodeBatch
from metarobot.core.policy import GaussianMLPPolicy, Params, gaussian_log_prob, rows_policy_forward
from metarobot.core.recurrent import GaussianGRUPolicy
from metarobot.sampling import ray_workers
from metarobot.sampling.buffers import EpisodeBuffers, SlotTable
from metarobot.sampling.ray_workers import RayWorker
from metarobot.sampling.schedule import Group, JobQueue, pipeline_groups, reset_seed
from metarobot.sampling.workers import LocalWorker, ProcessWorker, WorkerDied, WorkerFailed
from metarobot.training.config import SAMPLER_BACKENDS, SamplerBackendName
from sim_envs.tasks import Task

_log = logging.getLogger(__name__)

__all__ = ["MultiTaskSampler", "RawThroughput", "reset_seed"]


class RawThroughput(NamedTuple):
    """Env steps taken by all workers at once, and the wall time it took."""

    env_steps: int
    seconds: float

    @property
    def steps_per_second(self) -> float:
        return self.env_steps / self.seconds


# ============================================================== the sampler
class MultiTaskSampler:
    """Samples episodes of many tasks in parallel, each task with its own policy parameters.

    Args:
        env_id: gymnasium id of a sim_envs family (e.g. ``"sim_envs/Reach-v0"``); a
            ``"module:Name-v0"`` id imports ``module`` in the workers first.
        num_workers: worker processes (Ray actors with the ray backend); 0 runs the envs
            in this process (local backend only).
        envs_per_worker: envs (slots) per worker (with ``num_workers=0``: in this process).
        device: where the policy runs.
        env_kwargs: keyword arguments of ``gymnasium.make``.
        start_method: multiprocessing start method; keep ``"spawn"`` when this process may
            hold CUDA (forking it is unsafe).
        logger: receives one line per worker death and restart (default: ``logging``).
        step_timeout: seconds a worker may take for one message before it is treated as
            hung, killed and replaced.
        max_restarts: worker restarts allowed per :meth:`sample` call before it gives up
            with ``RuntimeError`` (an env that crashes on every episode would loop forever).
        policy_threads: torch intra-op threads during :meth:`sample` on CPU (restored after).
            The per-step batches are tiny: more threads only add synchronisation and take
            cores from the workers.
        backend: ``"local"`` (worker processes) or ``"ray"`` (Ray actors, one CPU each;
            needs ``num_workers >= 1``). ``start_method`` is the local backend's only.
        ray_address: the Ray cluster to join (``"auto"``, ``"host:6379"``, ...). None: the
            Ray instance this process is already connected to, else a local instance with
            ``num_workers`` CPUs, started here and shut down by :meth:`close`.

    Attributes:
        events: worker deaths and restarts, oldest first, as dicts with ``"event"``
            (``"worker_died"`` or ``"worker_restarted"``), ``"worker"``, ``"pid"``, ``"time"``
            and, for deaths, ``"reason"`` and the re-run ``"episodes"`` as (task, episode).
        last_stats: figures of the last :meth:`sample` call: ``seconds``, ``env_steps``,
            ``policy_seconds`` (the batched policy calls, summed), ``worker_seconds``
            (time blocked waiting for step replies, summed: the workers' time the
            pipeline did not hide behind the main process's work), ``policy_calls`` (one
            per pipeline stage with running slots: about two per env step), ``restarts``.
        family, obs_dim, act_dim, max_episode_steps: of the env.
    """

    def __init__(self, env_id: str, num_workers: int, envs_per_worker: int, *,
                 device: str | torch.device = "cpu", env_kwargs: dict | None = None,
                 start_method: str = "spawn", logger: Callable[[str], None] | None = None,
                 step_timeout: float = 60.0, max_restarts: int = 10,
                 policy_threads: int | None = 1, backend: SamplerBackendName = "local",
                 ray_address: str | None = None) -> None:
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        if not isinstance(envs_per_worker, int) or envs_per_worker < 1:
            raise ValueError(f"envs_per_worker must be an integer >= 1, got {envs_per_worker!r}")
        if start_method not in multiprocessing.get_all_start_methods():
            raise ValueError(f"start_method must be one of "
                             f"{multiprocessing.get_all_start_methods()}, got {start_method!r}")
        if not step_timeout > 0:
            raise ValueError(f"step_timeout must be > 0, got {step_timeout!r}")
        if policy_threads is not None and policy_threads < 1:
            raise ValueError(f"policy_threads must be >= 1 or None, got {policy_threads!r}")
        if backend not in SAMPLER_BACKENDS:
            raise ValueError(f"backend must be one of {list(SAMPLER_BACKENDS)}, got {backend!r}")
        if backend == "ray" and num_workers == 0:
            raise ValueError("the ray backend needs num_workers >= 1 (its workers are actors)")
        self.env_id = env_id
        self.num_workers = num_workers
        self.envs_per_worker = envs_per_worker
        self.device = torch.device(device)
        self.env_kwargs = dict(env_kwargs or {})
        self.step_timeout = float(step_timeout)
        self.max_restarts = int(max_restarts)
        self.policy_threads = policy_threads
        self.backend = backend
        self.events: list[dict[str, Any]] = []
        self.last_stats: dict[str, float] = {}
        self._logger = logger if logger is not None else _log.warning
        self._ctx = multiprocessing.get_context(start_method)
        self._workers: list[LocalWorker | ProcessWorker | RayWorker] = []
        self._closed = False
        self._owns_ray = False
        try:
            if backend == "ray":
                self._owns_ray = ray_workers.connect(ray_address, num_workers)
            if num_workers == 0:
                try:
                    self._workers = [LocalWorker(env_id, self.env_kwargs, envs_per_worker)]
                except Exception as error:
                    raise ValueError(f"cannot create {env_id!r}: {error!r}") from error
                spec = self._workers[0].describe(self.step_timeout)
            else:
                # Start every worker before waiting for any, so they build their envs at once.
                self._workers = [self._new_worker(w) for w in range(num_workers)]
                specs = [self._hello(worker) for worker in self._workers]
                spec = specs[0]
        except BaseException:
            self.close()
            raise
        if spec["max_episode_steps"] is None:
            self.close()
            raise ValueError(f"{env_id!r} has no max_episode_steps; the sampler pads to it")
        if len(spec["obs_shape"]) != 1 or len(spec["act_shape"]) != 1:
            self.close()
            raise ValueError(f"{env_id!r} needs flat observations and actions, got "
                             f"{spec['obs_shape']} and {spec['act_shape']}")
        self.family: str = spec["family"]
        self.obs_dim: int = spec["obs_shape"][0]
        self.act_dim: int = spec["act_shape"][0]
        self.max_episode_steps: int = int(spec["max_episode_steps"])

    @property
    def num_slots(self) -> int:
        """Envs stepping in parallel: ``max(num_workers, 1) * envs_per_worker``."""
        return len(self._workers) * self.envs_per_worker

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (empty with ``num_workers=0``); a Ray actor's
        is on its node."""
        return [w.pid for w in self._workers if w.pid is not None]

    # ---------------------------------------------------------------- sampling
    def sample(self, model: GaussianMLPPolicy, params: Params, tasks: Sequence[Task],
               episodes_per_task: int, *, seed: int, generator: torch.Generator,
               deterministic: bool = False) -> EpisodeBatch:
        """``episodes_per_task`` episodes of every task, task ``m`` run with ``params[·][m]``.

        Args:
            model: the policy architecture and observation normaliser (on ``device``).
            params: stacked parameters, each ``[M, *shape]`` with ``M == len(tasks)``.
            tasks: ``M`` tasks of this sampler's family.
            episodes_per_task: ``E >= 1``.
            seed: non-negative int; reset seeds derive from it (see :func:`reset_seed`).
            generator: draws the action noise ``[M, E, T, A]`` (untouched if deterministic).
            deterministic: act with the mean action.

        Returns:
            An :class:`EpisodeBatch` ``[M, E, T, ...]`` on ``device`` with ``T`` the env's
            ``max_episode_steps``; ``act`` is the sampled action (the env clips it) and
            ``logp`` its log-probability under the slot's parameters.
        """
        return self._run_call(_SampleCall, model, params, tasks, episodes_per_task, seed,
                              generator, deterministic)

    def sample_trials(self, model: GaussianGRUPolicy, params: Params, tasks: Sequence[Task],
                      episodes_per_task: int, *, seed: int, generator: torch.Generator,
                      deterministic: bool = False) -> EpisodeBatch:
        """RL2 trials: the ``episodes_per_task`` episodes of each task run on one slot, in
        order, with the GRU policy's hidden state carried across them (reset at each
        task's first episode). Arguments, noise, seeds and the returned batch as for
        :meth:`sample`; see :mod:`metarobot.sampling.trials`."""
        from metarobot.sampling.trials import TrialCall

        return self._run_call(TrialCall, model, params, tasks, episodes_per_task, seed,
                              generator, deterministic)

    def _run_call(self, call_type: type[_SampleCall], model: Any, params: Params,
                  tasks: Sequence[Task], episodes_per_task: int, seed: int,
                  generator: torch.Generator, deterministic: bool) -> EpisodeBatch:
        """Check the inputs and run one call of ``call_type`` without gradients, with
        :attr:`policy_threads` torch threads."""
        if self._closed:
            raise ValueError("the sampler is closed")
        self._check_inputs(model, params, tasks, episodes_per_task, seed, generator)
        threads = torch.get_num_threads()
        if self.policy_threads is not None and self.device.type == "cpu":
            torch.set_num_threads(self.policy_threads)
        try:
            with torch.no_grad():
                call = call_type(self, model, params, list(tasks), episodes_per_task,
                                 seed, generator, deterministic)
                return call.run()
        finally:
            torch.set_num_threads(threads)

    def _check_inputs(self, model: GaussianMLPPolicy, params: Params, tasks: Sequence[Task],
                      episodes_per_task: int, seed: int, generator: torch.Generator) -> None:
        if len(tasks) == 0:
            raise ValueError("tasks is empty")
        for task in tasks:
            if not isinstance(task, Task):
                raise ValueError(f"tasks must be sim_envs Tasks, got {type(task).__name__}")
            if task.family != self.family:
                raise ValueError(f"{self.env_id!r} simulates family {self.family!r}, "
                                 f"got a task of family {task.family!r} ({task.task_id})")
        expected = {name for name, _ in model.named_parameters()}
        if set(params) != expected:
            raise ValueError(f"params names {sorted(params)} do not match the model's "
                             f"{sorted(expected)}")
        for name, value in params.items():
            if value.dim() == 0 or value.shape[0] != len(tasks):
                raise ValueError(f"params[{name!r}] has shape {tuple(value.shape)}: its leading "
                                 f"(task) dim must equal len(tasks) = {len(tasks)}")
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"params[{name!r}] contains NaN or inf")
        if (model.obs_dim, model.act_dim) != (self.obs_dim, self.act_dim):
            raise ValueError(f"model is for obs/act dims {(model.obs_dim, model.act_dim)}, "
                             f"the env has {(self.obs_dim, self.act_dim)}")
        if isinstance(episodes_per_task, bool) or not isinstance(episodes_per_task, int) \
                or episodes_per_task < 1:
            raise ValueError(f"episodes_per_task must be an integer >= 1, "
                             f"got {episodes_per_task!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator)}")
        if model.obs_mean.device.type != self.device.type:
            raise ValueError(f"model is on {model.obs_mean.device}, the sampler's device is "
                             f"{self.device}")

    def _broadcast_tasks(self, tasks: list[Task]) -> None:
        # Ray: one copy in the object store that every actor reads.
        shared = ray_workers.share(tasks) if self.backend == "ray" else tasks
        for w in range(len(self._workers)):
            for attempt in range(2):
                try:
                    worker = self._workers[w]
                    worker.recv(worker.send("set_tasks", shared), self.step_timeout)
                    break
                except WorkerDied as error:
                    if attempt == 1:
                        raise RuntimeError(f"worker {w} died twice while receiving the tasks"
                                           ) from error
                    self._replace_worker(w, str(error), [], None)

    # ---------------------------------------------------------------- workers
    def _new_worker(self, index: int) -> ProcessWorker | RayWorker:
        name = f"metarobot-sampler-{index}"
        if self.backend == "ray":
            return RayWorker(self.env_id, self.env_kwargs, self.envs_per_worker, name)
        return ProcessWorker(self._ctx, self.env_id, self.env_kwargs, self.envs_per_worker,
                             name=name)

    def _hello(self, worker: ProcessWorker | RayWorker) -> dict[str, Any]:
        try:
            return worker.describe(max(self.step_timeout, 120.0))
        except WorkerDied as error:
            hint = (" (a Ray actor waits for a free CPU: does the cluster have one per "
                    "worker?)" if isinstance(worker, RayWorker) else "")
            raise RuntimeError(f"sampler worker {worker.name} failed to start: "
                               f"{error}{hint}") from error
        except WorkerFailed as error:
            raise ValueError(f"cannot create {self.env_id!r} in a worker: {error}") from error

    def _replace_worker(self, index: int, reason: str, lost: list[tuple[int, int]],
                        tasks: list[Task] | None) -> None:
        old = self._workers[index]
        assert isinstance(old, (ProcessWorker, RayWorker))
        old.kill()
        self._record({"event": "worker_died", "worker": index, "pid": old.pid,
                      "exitcode": old.exitcode, "reason": reason,
                      "episodes": lost, "time": time.time()},
                     f"sampler worker {index} (pid {old.pid}) died: {reason}; "
                     f"re-running {len(lost)} episode(s)")
        new = self._new_worker(index)
        self._workers[index] = new
        self._hello(new)
        if tasks is not None:
            new.recv(new.send("set_tasks", tasks), self.step_timeout)
        self._record({"event": "worker_restarted", "worker": index, "pid": new.pid,
                      "time": time.time()},
                     f"sampler worker {index} restarted (pid {new.pid})")

    def _record(self, event: dict[str, Any], message: str) -> None:
        self.events.append(event)
        self._logger(message)

    def measure_raw_throughput(self, steps_per_env: int = 200, seed: int = 0) -> RawThroughput:
        """Every worker steps all its envs ``steps_per_env`` times with random actions, all
        workers at once, no policy and no IPC per step: the ceiling :meth:`sample` is
        measured against. Envs keep the last tasks they simulated."""
        if steps_per_env < 1:
            raise ValueError(f"steps_per_env must be >= 1, got {steps_per_env}")
        start = time.perf_counter()
        total = 0
        try:
            calls = [worker.send("raw_steps", steps_per_env, seed + 1000 * w)
                     for w, worker in enumerate(self._workers)]
            for worker, seq in zip(self._workers, calls):
                total += worker.recv(seq, None)[0]
        except WorkerDied as error:
            raise RuntimeError(f"a worker died during the throughput run: {error}") from error
        return RawThroughput(total, time.perf_counter() - start)

    # ---------------------------------------------------------------- shutdown
    def close(self) -> None:
        """Stop the workers and close the envs (idempotent)."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        for worker in self._workers:
            try:
                worker.close()
            except Exception as error:  # closing must not stop the other workers' shutdown
                _log.warning("closing sampler worker failed: %r", error)
        self._workers = []
        if self._owns_ray:
            self._owns_ray = False
            ray_workers.shutdown()

    def __enter__(self) -> MultiTaskSampler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


# ============================================================== one sample call
class _SampleCall:
    """One :meth:`MultiTaskSampler.sample` call: its episodes, slots, job queue and the
    pipeline loop (:meth:`run`) that receives step replies, calls the policy and sends
    the next steps. :class:`metarobot.sampling.trials.TrialCall` (RL2) overrides the
    hooks :meth:`setup_policy`, :meth:`task_log_std`, :meth:`job_queue` and :meth:`act`."""

    def __init__(self, sampler: MultiTaskSampler, model: GaussianMLPPolicy, params: Params,
                 tasks: list[Task], num_eps: int, seed: int, generator: torch.Generator,
                 deterministic: bool) -> None:
        self.sampler, self.tasks, self.num_eps = sampler, tasks, num_eps
        self.started_at = time.perf_counter()
        device, num_tasks = sampler.device, len(tasks)
        T, A = sampler.max_episode_steps, sampler.act_dim
        self.seeds = [[reset_seed(int(seed), m, e) for e in range(num_eps)]
                      for m in range(num_tasks)]
        self.setup_policy(model, {k: v.detach().to(device) for k, v in params.items()})
        # The log-std does not depend on the observation, so every (task, episode, step)'s
        # action offset from the mean (std * noise) and log-probability are known up front,
        # and a policy call only computes means. Rows are flat (task, episode, step) indices.
        task_log_std = self.task_log_std(num_tasks)
        log_std = task_log_std[:, None, None].expand(num_tasks, num_eps, T, A)
        if deterministic:
            offset = torch.zeros_like(log_std)
        else:
            noise = torch.randn((num_tasks, num_eps, T, A), generator=generator,
                                device=generator.device).to(device)
            offset = torch.exp(log_std) * noise
        self.logp_table = gaussian_log_prob(torch.zeros_like(offset), log_std, offset).reshape(-1)
        self.offset = offset.reshape(-1, A)

        self.episodes = EpisodeBuffers(num_tasks, num_eps, T, sampler.obs_dim, A)
        self.slots = SlotTable(sampler.num_slots, sampler.obs_dim, A)
        self.jobs = self.job_queue(num_tasks, num_eps)
        self.stages = pipeline_groups(len(sampler._workers), sampler.envs_per_worker)
        self.groups = [group for stage in self.stages for group in stage]
        self.stats = {"policy_seconds": 0.0, "worker_seconds": 0.0, "policy_calls": 0,
                      "restarts": 0}

    def run(self) -> EpisodeBatch:
        sampler, slots = self.sampler, self.slots
        for worker in sampler._workers:
            worker.forget()  # replies still due from an earlier call that raised
        sampler._broadcast_tasks(self.tasks)
        every_slot = np.arange(sampler.num_slots)
        stage_slots = [np.concatenate([every_slot[g.slots] for g in stage])
                       for stage in self.stages]
        # The pipeline: each stage receives its groups' replies, runs the policy once for
        # their running slots and sends their next steps, while the workers step their
        # other groups. The order is fixed, so the schedule does not depend on timing.
        while self.jobs or slots.any_running() or any(g.seq is not None for g in self.groups):
            for stage, stage_slot in zip(self.stages, stage_slots):
                for group in stage:
                    if group.seq is not None:
                        self.receive(group)
                running = stage_slot[slots.task[stage_slot] >= 0]
                if running.size:
                    self.act(running)
                for group in stage:
                    self.send(group)
        sampler.last_stats = {"seconds": time.perf_counter() - self.started_at,
                              "env_steps": float(self.episodes.length.sum()),
                              **{key: float(value) for key, value in self.stats.items()}}
        return self.episodes.to_batch(sampler.device)

    def setup_policy(self, model: GaussianMLPPolicy, params: Params) -> None:
        """The batched policy of this call (``params`` detached, on the device)."""
        self.policy = _batched_policy(model, params)

    def task_log_std(self, num_tasks: int) -> Tensor:
        """Every task's log-std ``[M, A]`` (state independent)."""
        device = self.sampler.device
        return self.policy(torch.arange(num_tasks, device=device),
                           torch.zeros(num_tasks, self.sampler.obs_dim, device=device))[1]

    def job_queue(self, num_tasks: int, num_eps: int) -> JobQueue:
        return JobQueue(num_tasks, num_eps)

    def act(self, running: np.ndarray) -> None:
        """One batched policy call: the next action of every slot in ``running``."""
        policy_start = time.perf_counter()
        slots, A = self.slots, self.sampler.act_dim
        task = slots.task[running]
        row = self.episodes.rows(task, slots.episode[running], slots.t[running])
        # One host-to-device copy for the indices, one back for actions and logp.
        index = torch.as_tensor(np.stack([task, row]), device=self.sampler.device)
        obs = torch.as_tensor(slots.obs[running], device=self.sampler.device)
        mean, _ = self.policy(index[0], obs)
        both = torch.cat([mean + self.offset[index[1]], self.logp_table[index[1], None]], 1)
        both = both.float().cpu().numpy()
        self.stats["policy_seconds"] += time.perf_counter() - policy_start
        self.stats["policy_calls"] += 1
        self.episodes.record_actions(row, slots.obs[running], both[:, :A], both[:, A])
        slots.act[running] = both[:, :A]

    def send(self, group: Group) -> None:
        """Hand the group's idle slots the next jobs, its running slots one to start if
        their episode ends at this step (handed back if it does not), and send the step."""
        slots, jobs = self.slots, self.jobs
        stepping = slots.task[group.slots] >= 0
        starts: list[tuple[int, int] | None] = [None] * len(stepping)
        for i in [*np.flatnonzero(~stepping), *np.flatnonzero(stepping)]:
            if not jobs:
                break
            starts[i] = jobs.take(slots.env_task[group.slots.start + i])
        if not stepping.any() and all(job is None for job in starts):
            return
        group.starts = starts  # before sending: a failed send hands them back too
        worker_starts = [None if job is None else (job[0], self.seeds[job[0]][job[1]])
                         for job in starts]
        try:
            group.seq = self.sampler._workers[group.worker].send(
                "step", slots.act[group.slots], stepping, worker_starts, group.lo, group.hi)
        except WorkerDied as error:
            self.worker_died(group.worker, str(error))

    def receive(self, group: Group) -> None:
        """Wait for the group's step reply and record it."""
        assert group.seq is not None and group.starts is not None
        slots, episodes = self.slots, self.episodes
        wait_start = time.perf_counter()
        try:
            reply = self.sampler._workers[group.worker].recv(group.seq,
                                                              self.sampler.step_timeout)
        except WorkerDied as error:
            reply, death = None, str(error)
        self.stats["worker_seconds"] += time.perf_counter() - wait_start
        if reply is None:
            self.worker_died(group.worker, death)
            return
        starts, group.seq, group.starts = group.starts, None, None
        obs, rew, terminated, truncated, succ, started = reply
        unused: list[tuple[int, int]] = []
        for i, s in enumerate(range(group.slots.start, group.slots.stop)):
            if slots.task[s] >= 0:
                m, e, t = slots.task[s], slots.episode[s], slots.t[s]
                episodes.rew[m, e, t] = rew[i]
                slots.t[s] = t + 1
                if terminated[i] or truncated[i]:
                    episodes.finish(m, e, t + 1, bool(succ[i]))
                    slots.stop(s)
                elif t + 1 >= episodes.horizon:
                    raise RuntimeError(f"episode ran past max_episode_steps={episodes.horizon} "
                                       "without being truncated")
                else:
                    slots.obs[s] = obs[i]
            if started[i]:
                slots.start(s, starts[i], obs[i])
            elif starts[i] is not None:
                unused.append(starts[i])
        self.jobs.put_back(unused)

    def worker_died(self, w: int, reason: str) -> None:
        """Re-queue the running episodes and pending starts of both of the worker's
        groups, forget their outstanding messages and replace the worker."""
        sampler, slots = self.sampler, self.slots
        block = range(w * sampler.envs_per_worker, (w + 1) * sampler.envs_per_worker)
        lost = [(int(slots.task[s]), int(slots.episode[s])) for s in block
                if slots.task[s] >= 0]
        pending = [job for group in self.groups if group.worker == w and group.starts
                   for job in group.starts if job is not None]
        for group in self.groups:
            if group.worker == w:
                group.seq = group.starts = None
        slots.stop(slice(block.start, block.stop))
        self.stats["restarts"] += 1
        if self.stats["restarts"] > sampler.max_restarts:
            raise RuntimeError(f"{self.stats['restarts']} worker restarts in one sample call "
                               f"(max_restarts={sampler.max_restarts}); last: {reason}")
        sampler._replace_worker(w, reason, lost, self.tasks)
        self.jobs.requeue_lost(pending + lost)


def _batched_policy(model: GaussianMLPPolicy, params: Params,
                    ) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``(task index [N], obs [N, O]) -> (mean, log_std)`` each ``[N, A]``, slot i
    evaluated with the parameters of task ``index[i]``."""
    if all(bool((v == v[:1]).all()) for v in params.values()):
        # Every task has the same parameters (pre-update sampling): no gather.
        shared = {k: v[0] for k, v in params.items()}
        return lambda task_index, obs: rows_policy_forward(model, shared, obs)
    return lambda task_index, obs: rows_policy_forward(model, params, obs, task_index)
