"""The sampler's workers: the envs of one worker (:class:`EnvGroup`), the worker process
loop (:func:`worker_main`), and the main process's handles to a worker, in another
process (:class:`ProcessWorker`) or in this one (:class:`LocalWorker`), behind one
``send``/``recv`` interface (a third handle, to an :class:`EnvGroup` as a Ray actor, is
:class:`~metarobot.sampling.ray_workers.RayWorker`).

The worker side imports no torch: it steps envs and answers messages. A message is
``(seq, command, args)``, where ``command`` is a method of :class:`EnvGroup`; the reply
is ``(seq, "ok", result)`` or ``(seq, "error", traceback)``, in the order sent.
"""

from __future__ import annotations

import collections
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np

from sim_envs.tasks import Task

#: A job a slot starts: (task index, reset seed).
StartJob = tuple[int, int]


# ============================================================== worker side (no torch)
class EnvGroup:
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
        """The env spec, and the process id of this worker (on its node, for a Ray actor)."""
        env = self.envs[0]
        return {"pid": os.getpid(), "family": env.unwrapped.family.name,
                "obs_shape": tuple(env.observation_space.shape),
                "act_shape": tuple(env.action_space.shape),
                "max_episode_steps": env.spec.max_episode_steps if env.spec else None}

    def set_tasks(self, tasks: Sequence[Task]) -> None:
        self.tasks = tasks

    def step(self, actions: np.ndarray, stepping: np.ndarray, starts: list[StartJob | None],
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


def worker_main(conn: multiprocessing.connection.Connection, env_id: str,
                 env_kwargs: dict[str, Any], num_envs: int) -> None:
    """Worker process loop: build the envs, then answer ``(seq, command, args)`` messages
    with ``(seq, "ok", result)`` or ``(seq, "error", traceback)``."""
    # Ctrl-C goes to the whole process group; the sampler shuts workers down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        group = EnvGroup(env_id, env_kwargs, num_envs)
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


class WorkerDied(Exception):
    """The worker process died or stopped answering."""


class WorkerFailed(RuntimeError):
    """A command raised inside the worker (the worker itself is fine)."""


class LocalWorker:
    """The envs in this process, behind the same send/recv interface as a worker: calls
    are queued by :meth:`send` and run in order by :meth:`recv`."""

    pid = None

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], num_envs: int) -> None:
        self.group = EnvGroup(env_id, env_kwargs, num_envs)
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


class ProcessWorker:
    """One worker process and its pipe; every failure to talk to it raises WorkerDied."""

    def __init__(self, ctx: multiprocessing.context.BaseContext, env_id: str,
                 env_kwargs: dict[str, Any], num_envs: int, name: str) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=worker_main, name=name, daemon=True,
                                   args=(child, env_id, env_kwargs, num_envs))
        self.process.start()
        child.close()  # the worker holds the only other end, so its death gives us EOF
        self.pid = self.process.pid
        self.name = name
        self._seq = 0
        self._waiting: set[int] = set()  # sent, reply not received yet
        self._early: dict[int, tuple[str, Any]] = {}  # replies that came before their recv

    @property
    def exitcode(self) -> int | None:
        """The process's exit code once it ended (negative: killed by that signal)."""
        return self.process.exitcode

    def describe(self, timeout: float) -> dict[str, Any]:
        """The hello message the worker sends once its envs are built."""
        return self._reply(0, timeout)

    def send(self, command: str, *args: Any) -> int:
        """Sends one call and returns its sequence number, for :meth:`recv`."""
        self._seq += 1
        try:
            self.conn.send((self._seq, command, args))
        except (BrokenPipeError, EOFError, OSError) as error:
            raise WorkerDied(f"send failed ({error!r})") from error
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
                raise WorkerDied(f"no reply within {timeout} s")
            if self.conn not in ready:
                raise WorkerDied(f"process exited (exit code {self.process.exitcode})")
            try:
                reply_seq, status, value = self.conn.recv()
            except (EOFError, OSError) as error:
                self.process.join(1.0)
                raise WorkerDied(
                    f"pipe closed (exit code {self.process.exitcode})") from error
            if reply_seq == seq or reply_seq in self._waiting:
                self._early[reply_seq] = (status, value)
            # else: a stale reply of a call given up on (forget), skipped
        self._waiting.discard(seq)
        status, value = self._early.pop(seq)
        if status == "error":
            raise WorkerFailed(f"worker {self.process.name} (pid {self.pid}): {value}")
        return value

    def close(self, timeout: float = 5.0) -> None:
        if self.process.is_alive():
            try:
                self.send("close")
            except WorkerDied:
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
