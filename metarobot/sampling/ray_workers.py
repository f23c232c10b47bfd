"""The sampler's workers as Ray actors: :class:`RayWorker`, the main process's handle to
one :class:`~metarobot.sampling.workers.EnvGroup` running as a Ray actor, behind the same
``send``/``recv`` interface as the process and local handles of
:mod:`~metarobot.sampling.workers`; and :func:`connect`, which joins or starts Ray.

The actor *is* an :class:`EnvGroup` (``ray.remote`` around the class itself), so the ray
backend steps envs with exactly the worker code of the local backend: one PyBullet client
per env, ``envs_per_worker`` envs per actor, one actor per worker, each asking Ray for
one CPU. A command is an actor method call: Ray runs an actor's calls from one caller in
the order they were submitted, as a worker process answers its pipe, so the sampler's
pipeline keeps two calls in flight per worker here too.

Failures map onto the local backend's: a dead actor (killed, crashed, its node lost) or
one that does not answer within the timeout raises
:class:`~metarobot.sampling.workers.WorkerDied`, and the sampler kills it and starts a
fresh actor (the actors have ``max_restarts=0``: the sampler, not Ray, restarts them, so
that the lost episodes are re-queued on one path for both backends). A command that
raised inside the actor raises :class:`~metarobot.sampling.workers.WorkerFailed`.

``ray`` is imported only here and only when a ray sampler is made, so the sampler module
imports without Ray installed.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

from metarobot.sampling.workers import EnvGroup, WorkerDied, WorkerFailed

#: What to install for the ray backend (the ``ray`` extra in pyproject.toml).
INSTALL_RAY_EXTRA = "pip install 'metarobot[ray]'"


def import_ray() -> ModuleType:
    """The ``ray`` module; ``ValueError`` naming the extra when it is not installed."""
    try:
        import ray
    except ModuleNotFoundError as err:
        if err.name != "ray":
            raise  # a broken Ray install: its own traceback
        raise ValueError(f"sampler.backend 'ray' needs Ray (ray is not installed): "
                         f"{INSTALL_RAY_EXTRA}") from None
    return ray


def connect(address: str | None, num_cpus: int) -> bool:
    """Make sure this process is connected to Ray.

    Args:
        address: a running cluster (``"auto"``, ``"host:6379"``, ``"ray://host:10001"``);
            ignored when Ray is already initialised in this process. None or ``""``: use
            the instance this process already has, else start a local one.
        num_cpus: the CPUs a started local instance offers (one per actor).

    Returns:
        True when this call started a local instance, which the caller shuts down.
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    if address:
        try:
            ray.init(address=address)
        except ConnectionError as err:
            raise ValueError(f"cannot connect to the Ray cluster at {address!r}: "
                             f"{' '.join(str(err).split())}") from err
        return False
    # Logical CPUs: one per actor, so that every actor is scheduled at once.
    ray.init(num_cpus=num_cpus, include_dashboard=False)
    return True


def shutdown() -> None:
    """Disconnect from Ray (stops a local instance this process started)."""
    import_ray().shutdown()


def share(value: Any) -> Any:
    """``value`` in Ray's object store, once, for several actors' calls (an argument
    ``ObjectRef`` reaches each actor's method as the value itself)."""
    return import_ray().put(value)


@functools.cache
def _actor_class() -> Any:
    ray = import_ray()
    # One CPU each: an actor steps its envs one after the other. max_restarts=0: the
    # sampler restarts dead actors itself (see the module docstring).
    return ray.remote(num_cpus=1, max_restarts=0)(EnvGroup)


class RayWorker:
    """One :class:`EnvGroup` as a Ray actor; every failure to reach it raises
    :class:`WorkerDied`.

    Args:
        env_id, env_kwargs, num_envs: as for :class:`EnvGroup`.
        name: for messages (``"metarobot-sampler-3"``).
    """

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], num_envs: int,
                 name: str) -> None:
        self._ray = import_ray()
        self.name = name
        #: The actor's process id on its node, known after :meth:`describe`.
        self.pid: int | None = None
        self.actor = _actor_class().remote(env_id, env_kwargs, num_envs)
        self._seq = 0
        self._refs: dict[int, Any] = {}  # seq -> ObjectRef of the reply not received yet

    @property
    def exitcode(self) -> int | None:
        """Not known for an actor (Ray reports the cause in the error message instead)."""
        return None

    def describe(self, timeout: float) -> dict[str, Any]:
        """The env spec; the first reply, so it also waits for the actor to start (Ray
        may have to schedule it on a node and start a worker process)."""
        spec = self.recv(self.send("describe"), timeout)
        self.pid = spec.get("pid")
        return spec

    def send(self, command: str, *args: Any) -> int:
        """Submits one call and returns its sequence number, for :meth:`recv`."""
        self._seq += 1
        self._refs[self._seq] = getattr(self.actor, command).remote(*args)
        return self._seq

    def recv(self, seq: int, timeout: float | None) -> Any:
        """The reply to call ``seq``; other calls may be outstanding."""
        exceptions = self._ray.exceptions
        ref = self._refs.pop(seq)
        try:
            return self._ray.get(ref, timeout=timeout)
        except exceptions.GetTimeoutError as error:
            raise WorkerDied(f"no reply within {timeout} s") from error
        except exceptions.RayTaskError as error:  # the command raised in the actor
            raise WorkerFailed(f"worker {self.name} (pid {self.pid}): {error}") from error
        except exceptions.RayActorError as error:
            if getattr(error, "actor_init_failed", False):  # EnvGroup() raised
                raise WorkerFailed(f"worker {self.name}: {error}") from error
            raise WorkerDied(f"actor died ({_first_line(error)})") from error
        except exceptions.RayError as error:  # e.g. its node or the reply object lost
            raise WorkerDied(f"{type(error).__name__} ({_first_line(error)})") from error

    def forget(self) -> None:
        """Give up on the outstanding calls (their replies are dropped)."""
        self._refs.clear()

    def close(self, timeout: float = 5.0) -> None:
        """Close the envs, then end the actor."""
        try:
            self._ray.get(self.actor.close.remote(), timeout=timeout)
        except Exception:  # dead or hung: killing it below is all that is left
            pass
        self.kill()

    def kill(self) -> None:
        self._refs.clear()
        try:
            self._ray.kill(self.actor, no_restart=True)
        except Exception:  # already gone, or Ray was shut down before the sampler
            pass


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
