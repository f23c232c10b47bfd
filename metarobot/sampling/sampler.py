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

Workers are started with ``spawn`` by default, so a script that creates a sampler with
workers needs the usual ``if __name__ == "__main__":`` guard.

Failures: a worker that dies (segfault, SIGKILL: pipe EOF or process sentinel) or does not
answer within ``step_timeout`` is killed and replaced by a fresh worker. The running
episodes of both its groups and the jobs its outstanding messages were to start go back to
the queue (those messages are forgotten, never read from the new worker), and the
episodes are re-run from reset with the same reset seeds and the same noise, so the batch
equals the one an undisturbed run would give. Each death and restart is appended to
:attr:`MultiTaskSampler.events` and reported through ``logger``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from metarobot.core.batch import EpisodeBatch
from metarobot.core.policy import GaussianMLPPolicy, Params, gaussian_log_prob, rows_policy_forward
from sim_envs.tasks import Task

_log = logging.getLogger(__name__)

#: A job a slot starts: (task index, reset seed).
_Start = tuple[int, int]


class _JobQueue:
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


@dataclasses.dataclass
class _Group:
    """Envs ``lo..hi-1`` of worker ``worker`` (the sampler's slots ``slots``): they step
    together, one message at a time, while the main process handles other groups."""

    worker: int
    lo: int
    hi: int
    slots: slice
    seq: int | None = None  # the step message whose reply is due
    starts: list[tuple[int, int] | None] | None = None  # its (task, episode) jobs, per env


# ============================================================== worker side (no torch)
class _EnvGroup:
    """The envs of one worker and the commands the sampler sends them."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], num_envs: int) -> None:
        import gymnasium

        import sim_envs  # noqa: F401  (registers the sim_envs ids in this process)

        self.envs: list[Any] = []
        for _ in range(num_envs):
            self.envs.append(gymnasium.make(env_id, **env_kwargs))
        first = self.envs[0].unwrapped
        if not hasattr(first, "set_task") or not hasattr(first, "family"):
            raise ValueError(f"{env_id!r} is not a sim_envs MetaEnv (no set_task/family)")
        self.task_ids = [env.unwrapped.get_task().task_id for env in self.envs]
        self.tasks: Sequence[Task] = ()

    def describe(self) -> dict[str, Any]:
        env = self.envs[0]
        return {"family": env.unwrapped.family.name,
                "obs_shape": tuple(env.observation_space.shape),
                "act_shape": tuple(env.action_space.shape),
                "max_episode_steps": env.spec.max_episode_steps if env.spec else None}

    def set_tasks(self, tasks: Sequence[Task]) -> None:
        self.tasks = tasks

    def step(self, actions: np.ndarray, stepping: np.ndarray, starts: list[_Start | None],
             lo: int = 0, hi: int | None = None) -> tuple[np.ndarray, ...]:
        """Step envs ``lo..hi-1`` (default: all); the arguments are indexed from ``lo``. Env
        ``lo + i`` steps with ``actions[i]`` if ``stepping[i]``, and starts ``starts[i]`` if
        it is idle or its episode ended at this step. Returns ``(obs, rew, terminated,
        truncated, success, started)``, each ``[hi - lo, ...]``; ``obs`` is the reset
        observation where a job started."""
        envs = self.envs[lo:hi]
        n = len(envs)
        obs = np.zeros((n, *self.envs[0].observation_space.shape), np.float32)
        rew = np.zeros(n, np.float32)
        terminated, truncated, success, started = (np.zeros(n, bool) for _ in range(4))
        for i, env in enumerate(envs):
            done = False
            if stepping[i]:
                obs[i], rew[i], terminated[i], truncated[i], info = env.step(actions[i])
                success[i] = bool(info.get("success", False))
                done = bool(terminated[i] or truncated[i])
            if starts[i] is not None and (done or not stepping[i]):
                obs[i] = self._start(lo + i, *starts[i])
                started[i] = True
        return obs, rew, terminated, truncated, success, started

    def _start(self, i: int, task_index: int, reset_seed: int) -> np.ndarray:
        task = self.tasks[task_index]
        if self.task_ids[i] != task.task_id:
            self.envs[i].unwrapped.set_task(task)
            self.task_ids[i] = task.task_id
        return self.envs[i].reset(seed=reset_seed)[0]

    def raw_steps(self, steps_per_env: int, seed: int) -> tuple[int, float]:
        """Step every env ``steps_per_env`` times with uniform random actions, resetting
        finished episodes, with no IPC in between. Returns ``(env steps, seconds)``."""
        rng = np.random.default_rng(seed)
        shape = self.envs[0].action_space.shape
        actions = rng.uniform(-1.0, 1.0, (steps_per_env, len(self.envs), *shape))
        actions = actions.astype(np.float32)
        for i, env in enumerate(self.envs):
            env.reset(seed=seed + i)
        start = time.perf_counter()
        for k in range(steps_per_env):
            for i, env in enumerate(self.envs):
                _, _, terminated, truncated, _ = env.step(actions[k, i])
                if terminated or truncated:
                    env.reset()
        return steps_per_env * len(self.envs), time.perf_counter() - start

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []


def _worker_main(conn: multiprocessing.connection.Connection, env_id: str,
                 env_kwargs: dict[str, Any], num_envs: int) -> None:
    """Worker process loop: build the envs, then answer ``(seq, command, args)`` messages
    with ``(seq, "ok", result)`` or ``(seq, "error", traceback)``."""
    # Ctrl-C goes to the whole process group; the sampler shuts workers down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        group = _EnvGroup(env_id, env_kwargs, num_envs)
        conn.send((0, "ok", group.describe()))
    except Exception:
        conn.send((0, "error", traceback.format_exc()))
        return
    try:
        while True:
            try:
                seq, command, args = conn.recv()
            except (EOFError, OSError):
                return  # the sampler is gone
            try:
                conn.send((seq, "ok", getattr(group, command)(*args)))
            except Exception:
                conn.send((seq, "error", traceback.format_exc()))
            if command == "close":
                return
    finally:
        group.close()


# ============================================================== main-process handles
class _WorkerDied(Exception):
    """The worker process died or stopped answering."""


class _WorkerFailed(RuntimeError):
    """A command raised inside the worker (the worker itself is fine)."""


class _LocalWorker:
    """The envs in this process, behind the same send/recv interface as a worker: calls
    are queued by :meth:`send` and run in order by :meth:`recv`."""

    pid = None

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], num_envs: int) -> None:
        self.group = _EnvGroup(env_id, env_kwargs, num_envs)
        self._seq = 0
        self._calls: collections.deque[tuple[int, str, tuple]] = collections.deque()
        self._results: dict[int, Any] = {}

    def describe(self, timeout: float) -> dict[str, Any]:
        return self.group.describe()

    def send(self, command: str, *args: Any) -> int:
        self._seq += 1
        self._calls.append((self._seq, command, args))
        return self._seq

    def recv(self, seq: int, timeout: float | None) -> Any:
        # Run the queued calls up to this one, in order, as a worker process would.
        while seq not in self._results:
            call_seq, command, args = self._calls.popleft()
            self._results[call_seq] = getattr(self.group, command)(*args)
        return self._results.pop(seq)

    def forget(self) -> None:
        """Drop the calls not received yet (a sample call that raised left them)."""
        self._calls.clear()
        self._results.clear()

    def close(self) -> None:
        self.group.close()


class _ProcessWorker:
    """One worker process and its pipe; every failure to talk to it raises _WorkerDied."""

    def __init__(self, ctx: multiprocessing.context.BaseContext, env_id: str,
                 env_kwargs: dict[str, Any], num_envs: int, name: str) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, name=name, daemon=True,
                                   args=(child, env_id, env_kwargs, num_envs))
        self.process.start()
        child.close()  # the worker holds the only other end, so its death gives us EOF
        self.pid = self.process.pid
        self._seq = 0
        self._waiting: set[int] = set()  # sent, reply not received yet
        self._early: dict[int, tuple[str, Any]] = {}  # replies that came before their recv

    def describe(self, timeout: float) -> dict[str, Any]:
        """The hello message the worker sends once its envs are built."""
        return self._reply(0, timeout)

    def send(self, command: str, *args: Any) -> int:
        """Sends one call and returns its sequence number, for :meth:`recv`."""
        self._seq += 1
        try:
            self.conn.send((self._seq, command, args))
        except (BrokenPipeError, EOFError, OSError) as error:
            raise _WorkerDied(f"send failed ({error!r})") from error
        self._waiting.add(self._seq)
        return self._seq

    def recv(self, seq: int, timeout: float | None) -> Any:
        """The reply to call ``seq``; other calls may be outstanding (replies come in order)."""
        return self._reply(seq, timeout)

    def forget(self) -> None:
        """Give up on the outstanding calls: their replies are skipped when they arrive."""
        self._waiting.clear()
        self._early.clear()

    def _reply(self, seq: int, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while seq not in self._early:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = multiprocessing.connection.wait([self.conn, self.process.sentinel], left)
            if not ready:
                raise _WorkerDied(f"no reply within {timeout} s")
            if self.conn not in ready:
                raise _WorkerDied(f"process exited (exit code {self.process.exitcode})")
            try:
                reply_seq, status, value = self.conn.recv()
            except (EOFError, OSError) as error:
                self.process.join(1.0)
                raise _WorkerDied(
                    f"pipe closed (exit code {self.process.exitcode})") from error
            if reply_seq == seq or reply_seq in self._waiting:
                self._early[reply_seq] = (status, value)
            # else: a stale reply of a call given up on (forget), skipped
        self._waiting.discard(seq)
        status, value = self._early.pop(seq)
        if status == "error":
            raise _WorkerFailed(f"worker {self.process.name} (pid {self.pid}): {value}")
        return value

    def close(self, timeout: float = 5.0) -> None:
        if self.process.is_alive():
            try:
                self.send("close")
            except _WorkerDied:
                pass
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout)
        self.conn.close()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5.0)
        self.conn.close()


class RawThroughput(NamedTuple):
    """Env steps taken by all workers at once, and the wall time it took."""

    env_steps: int
    seconds: float

    @property
    def steps_per_second(self) -> float:
        return self.env_steps / self.seconds


def reset_seed(seed: int, task_index: int, episode: int) -> int:
    """The env reset seed of episode ``episode`` of task ``task_index`` in a call with ``seed``."""
    return int(np.random.SeedSequence([seed, task_index, episode]).generate_state(1)[0])


# ============================================================== the sampler
class MultiTaskSampler:
    """Samples episodes of many tasks in parallel, each task with its own policy parameters.

    Args:
        env_id: gymnasium id of a sim_envs family (e.g. ``"sim_envs/Reach-v0"``); a
            ``"module:Name-v0"`` id imports ``module`` in the workers first.
        num_workers: worker processes; 0 runs the envs in this process.
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
                 policy_threads: int | None = 1) -> None:
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
        self.env_id = env_id
        self.num_workers = num_workers
        self.envs_per_worker = envs_per_worker
        self.device = torch.device(device)
        self.env_kwargs = dict(env_kwargs or {})
        self.step_timeout = float(step_timeout)
        self.max_restarts = int(max_restarts)
        self.policy_threads = policy_threads
        self.events: list[dict[str, Any]] = []
        self.last_stats: dict[str, float] = {}
        self._logger = logger if logger is not None else _log.warning
        self._ctx = multiprocessing.get_context(start_method)
        self._workers: list[_LocalWorker | _ProcessWorker] = []
        self._closed = False
        try:
            if num_workers == 0:
                try:
                    self._workers = [_LocalWorker(env_id, self.env_kwargs, envs_per_worker)]
                except Exception as error:
                    raise ValueError(f"cannot create {env_id!r}: {error!r}") from error
                spec = self._workers[0].describe(self.step_timeout)
            else:
                # Start every process before waiting for any, so they build their envs at once.
                self._workers = [self._new_process(w) for w in range(num_workers)]
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
        """Process ids of the live workers (empty with ``num_workers=0``)."""
        return [w.pid for w in self._workers if isinstance(w, _ProcessWorker)]

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
        if self._closed:
            raise ValueError("the sampler is closed")
        self._check_inputs(model, params, tasks, episodes_per_task, seed, generator)
        threads = torch.get_num_threads()
        if self.policy_threads is not None and self.device.type == "cpu":
            torch.set_num_threads(self.policy_threads)
        try:
            with torch.no_grad():
                return self._sample(model, params, list(tasks), episodes_per_task, seed,
                                    generator, deterministic)
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

    def _sample(self, model: GaussianMLPPolicy, params: Params, tasks: list[Task], num_eps: int,
                seed: int, generator: torch.Generator, deterministic: bool) -> EpisodeBatch:
        started_at = time.perf_counter()
        num_tasks, T, A = len(tasks), self.max_episode_steps, self.act_dim
        params = {k: v.detach().to(self.device) for k, v in params.items()}
        seeds = [[reset_seed(int(seed), m, e) for e in range(num_eps)] for m in range(num_tasks)]
        evaluate = self._batched_policy(model, params)
        # The log-std does not depend on the observation, so every (task, episode, step)'s
        # action offset from the mean (std * noise) and log-probability are known up front,
        # and a policy call only computes means. Rows are flat (task, episode, step) indices.
        _, task_log_std = evaluate(torch.arange(num_tasks, device=self.device),
                                   torch.zeros(num_tasks, self.obs_dim, device=self.device))
        log_std = task_log_std[:, None, None].expand(num_tasks, num_eps, T, A)
        if deterministic:
            offset = torch.zeros_like(log_std)
        else:
            noise = torch.randn((num_tasks, num_eps, T, A), generator=generator,
                                device=generator.device).to(self.device)
            offset = torch.exp(log_std) * noise
        logp_table = gaussian_log_prob(torch.zeros_like(offset), log_std, offset).reshape(-1)
        offset = offset.reshape(-1, A)

        obs_buf = np.zeros((num_tasks, num_eps, T, self.obs_dim), np.float32)
        act_buf = np.zeros((num_tasks, num_eps, T, A), np.float32)
        logp_buf = np.zeros((num_tasks, num_eps, T), np.float32)
        rew_buf = np.zeros((num_tasks, num_eps, T), np.float32)
        length = np.zeros((num_tasks, num_eps), np.int64)
        success = np.zeros((num_tasks, num_eps), np.float32)
        obs_rows, act_rows = obs_buf.reshape(-1, self.obs_dim), act_buf.reshape(-1, A)  # views
        logp_rows = logp_buf.reshape(-1)
        jobs = _JobQueue(num_tasks, num_eps)

        # Slot state: the (task, episode) it runs (-1: idle), its step, current obs and next
        # action, and the task it last started in this call. (Not the task its env kept from
        # an earlier call: the assignment must not depend on history for the batch to be
        # reproducible.)
        S = self.num_slots
        slot_env_task = [-1] * S
        slot_task = np.full(S, -1)
        slot_episode = np.full(S, -1)
        slot_t = np.zeros(S, np.int64)
        slot_obs = np.zeros((S, self.obs_dim), np.float32)
        slot_act = np.zeros((S, A), np.float32)
        stages = self._pipeline()
        groups = [group for stage in stages for group in stage]
        stage_slots = [np.concatenate([np.arange(S)[g.slots] for g in stage]) for stage in stages]
        stats = {"policy_seconds": 0.0, "worker_seconds": 0.0, "policy_calls": 0,
                 "restarts": 0}

        def finish(m: int, e: int, steps: int, succeeded: bool) -> None:
            length[m, e], success[m, e] = steps, float(succeeded)
            # Clear what a run of this episode on a worker that died may have left.
            obs_buf[m, e, steps:], act_buf[m, e, steps:] = 0.0, 0.0
            logp_buf[m, e, steps:], rew_buf[m, e, steps:] = 0.0, 0.0

        def act(running: np.ndarray) -> None:
            """One batched policy call: the next action of every slot in ``running``."""
            policy_start = time.perf_counter()
            task = slot_task[running]
            row = (task * num_eps + slot_episode[running]) * T + slot_t[running]
            # One host-to-device copy for the indices, one back for actions and logp.
            index = torch.as_tensor(np.stack([task, row]), device=self.device)
            obs = torch.as_tensor(slot_obs[running], device=self.device)
            mean, _ = evaluate(index[0], obs)
            both = torch.cat([mean + offset[index[1]], logp_table[index[1], None]], 1)
            both = both.float().cpu().numpy()
            stats["policy_seconds"] += time.perf_counter() - policy_start
            stats["policy_calls"] += 1
            obs_rows[row] = slot_obs[running]
            act_rows[row] = both[:, :A]
            logp_rows[row] = both[:, A]
            slot_act[running] = both[:, :A]

        def send(group: _Group) -> None:
            """Hand the group's idle slots the next jobs, its running slots one to start if
            their episode ends at this step (handed back if it does not), and send the step."""
            stepping = slot_task[group.slots] >= 0
            starts: list[tuple[int, int] | None] = [None] * len(stepping)
            for i in [*np.flatnonzero(~stepping), *np.flatnonzero(stepping)]:
                if not jobs:
                    break
                starts[i] = jobs.take(slot_env_task[group.slots.start + i])
            if not stepping.any() and all(job is None for job in starts):
                return
            group.starts = starts  # before sending: a failed send hands them back too
            worker_starts = [None if job is None else (job[0], seeds[job[0]][job[1]])
                             for job in starts]
            try:
                group.seq = self._workers[group.worker].send(
                    "step", slot_act[group.slots], stepping, worker_starts, group.lo, group.hi)
            except _WorkerDied as error:
                worker_died(group.worker, str(error))

        def receive(group: _Group) -> None:
            """Wait for the group's step reply and record it."""
            assert group.seq is not None and group.starts is not None
            wait_start = time.perf_counter()
            try:
                reply = self._workers[group.worker].recv(group.seq, self.step_timeout)
            except _WorkerDied as error:
                reply, death = None, str(error)
            stats["worker_seconds"] += time.perf_counter() - wait_start
            if reply is None:
                worker_died(group.worker, death)
                return
            starts, group.seq, group.starts = group.starts, None, None
            obs, rew, terminated, truncated, succ, started = reply
            unused: list[tuple[int, int]] = []
            for i, s in enumerate(range(group.slots.start, group.slots.stop)):
                if slot_task[s] >= 0:
                    m, e, t = slot_task[s], slot_episode[s], slot_t[s]
                    rew_buf[m, e, t] = rew[i]
                    slot_t[s] = t + 1
                    if terminated[i] or truncated[i]:
                        finish(m, e, t + 1, bool(succ[i]))
                        slot_task[s] = slot_episode[s] = -1
                    elif t + 1 >= T:
                        raise RuntimeError(f"episode ran past max_episode_steps={T} "
                                           "without being truncated")
                    else:
                        slot_obs[s] = obs[i]
                if started[i]:
                    slot_task[s], slot_episode[s] = starts[i]
                    slot_t[s], slot_obs[s] = 0, obs[i]
                    slot_env_task[s] = slot_task[s]
                elif starts[i] is not None:
                    unused.append(starts[i])
            jobs.put_back(unused)

        def worker_died(w: int, reason: str) -> None:
            """Re-queue the running episodes and pending starts of both of the worker's
            groups, forget their outstanding messages and replace the worker."""
            block = range(w * self.envs_per_worker, (w + 1) * self.envs_per_worker)
            lost = [(int(slot_task[s]), int(slot_episode[s])) for s in block
                    if slot_task[s] >= 0]
            pending = [job for group in groups if group.worker == w and group.starts
                       for job in group.starts if job is not None]
            for group in groups:
                if group.worker == w:
                    group.seq = group.starts = None
            slot_task[block.start:block.stop] = slot_episode[block.start:block.stop] = -1
            stats["restarts"] += 1
            if stats["restarts"] > self.max_restarts:
                raise RuntimeError(f"{stats['restarts']} worker restarts in one sample call "
                                   f"(max_restarts={self.max_restarts}); last: {reason}")
            self._replace_worker(w, reason, lost, tasks)
            jobs.put_back(pending + lost)

        for worker in self._workers:
            worker.forget()  # replies still due from an earlier call that raised
        self._broadcast_tasks(tasks)
        # The pipeline: each stage receives its groups' replies, runs the policy once for
        # their running slots and sends their next steps, while the workers step their
        # other groups. The order is fixed, so the schedule does not depend on timing.
        while jobs or (slot_task >= 0).any() or any(g.seq is not None for g in groups):
            for stage, slots in zip(stages, stage_slots):
                for group in stage:
                    if group.seq is not None:
                        receive(group)
                running = slots[slot_task[slots] >= 0]
                if running.size:
                    act(running)
                for group in stage:
                    send(group)

        mask = (np.arange(T) < length[..., None]).astype(np.float32)
        self.last_stats = {"seconds": time.perf_counter() - started_at,
                           "env_steps": float(length.sum()),
                           **{key: float(value) for key, value in stats.items()}}

        def out(array: np.ndarray) -> Tensor:
            return torch.from_numpy(array).to(self.device)

        return EpisodeBatch(out(obs_buf), out(act_buf), out(rew_buf), out(mask), out(logp_buf),
                            out(success))

    def _pipeline(self) -> list[list[_Group]]:
        """The pipeline's stages in their fixed order: each worker's envs are split in two
        groups (a worker with one env has one), stage 0 holds the first group of every
        worker, stage 1 the second, so a worker steps one group while the main process
        handles the other. (One stage per group would cost a policy call per group.)"""
        per = self.envs_per_worker
        halves = [(0, per)] if per == 1 else [(0, per // 2), (per // 2, per)]
        return [[_Group(w, lo, hi, slice(w * per + lo, w * per + hi))
                 for w in range(len(self._workers))] for lo, hi in halves]

    def _batched_policy(self, model: GaussianMLPPolicy, params: Params,
                        ) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """``(task index [N], obs [N, O]) -> (mean, log_std)`` each ``[N, A]``, slot i
        evaluated with the parameters of task ``index[i]``."""
        if all(bool((v == v[:1]).all()) for v in params.values()):
            # Every task has the same parameters (pre-update sampling): no gather.
            shared = {k: v[0] for k, v in params.items()}
            return lambda task_index, obs: rows_policy_forward(model, shared, obs)
        return lambda task_index, obs: rows_policy_forward(model, params, obs, task_index)

    def _broadcast_tasks(self, tasks: list[Task]) -> None:
        for w in range(len(self._workers)):
            for attempt in range(2):
                try:
                    worker = self._workers[w]
                    worker.recv(worker.send("set_tasks", tasks), self.step_timeout)
                    break
                except _WorkerDied as error:
                    if attempt == 1:
                        raise RuntimeError(f"worker {w} died twice while receiving the tasks"
                                           ) from error
                    self._replace_worker(w, str(error), [], None)

    # ---------------------------------------------------------------- workers
    def _new_process(self, index: int) -> _ProcessWorker:
        return _ProcessWorker(self._ctx, self.env_id, self.env_kwargs, self.envs_per_worker,
                              name=f"metarobot-sampler-{index}")

    def _hello(self, worker: _ProcessWorker) -> dict[str, Any]:
        try:
            return worker.describe(max(self.step_timeout, 120.0))
        except _WorkerDied as error:
            raise RuntimeError(f"sampler worker {worker.process.name} failed to start: "
                               f"{error}") from error
        except _WorkerFailed as error:
            raise ValueError(f"cannot create {self.env_id!r} in a worker: {error}") from error

    def _replace_worker(self, index: int, reason: str, lost: list[tuple[int, int]],
                        tasks: list[Task] | None) -> None:
        old = self._workers[index]
        assert isinstance(old, _ProcessWorker)
        old.kill()
        self._record({"event": "worker_died", "worker": index, "pid": old.pid,
                      "exitcode": old.process.exitcode, "reason": reason,
                      "episodes": lost, "time": time.time()},
                     f"sampler worker {index} (pid {old.pid}) died: {reason}; "
                     f"re-running {len(lost)} episode(s)")
        new = self._new_process(index)
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
        except _WorkerDied as error:
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

    def __enter__(self) -> MultiTaskSampler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
