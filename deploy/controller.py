"""Robot-controller interface, a fixed-rate control loop, and a gymnasium stand-in.

A robot is driven through :class:`RobotController`, a small protocol. The same loop
therefore runs a real robot or, through :class:`GymController`, any gymnasium env (the
simulator standing in for the robot). numpy only: no torch, no gymnasium import.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from deploy.runtime import AdaptivePolicy


@runtime_checkable
class RobotController(Protocol):
    """What the control loop needs from a robot.

    One control step is ``read_observation -> apply_action -> read_reward ->
    episode_status``; after an episode ends the loop calls ``start_episode``.
    """

    def start_episode(self) -> None:
        """Bring the robot to the start of an episode (reset pose, new target, ...)."""

    def read_observation(self) -> np.ndarray:
        """The current observation ``[O]`` (raw, as the policy was trained on)."""

    def apply_action(self, action: np.ndarray) -> None:
        """Send the action ``[A]`` (already clipped to the bounds) for this control step."""

    def read_reward(self) -> float:
        """The reward that followed the last action."""

    def episode_status(self) -> tuple[bool, bool]:
        """``(terminated, truncated)`` after the last action."""


class GymController:
    """Drives a gymnasium env through :class:`RobotController` (the env steps in
    ``apply_action``).

    Args:
        env: a gymnasium env (``reset``/``step`` API).
        seed: seed of the first reset (later resets continue the env's RNG).
    """

    def __init__(self, env: Any, seed: int | None = None) -> None:
        self.env = env
        self._seed = seed
        self._obs: np.ndarray | None = None
        self._reward = 0.0
        self._terminated = self._truncated = False
        self.info: dict[str, Any] = {}

    def start_episode(self) -> None:
        self._obs, self.info = self.env.reset(seed=self._seed)
        self._seed = None
        self._reward, self._terminated, self._truncated = 0.0, False, False

    def read_observation(self) -> np.ndarray:
        if self._obs is None:
            raise RuntimeError("start_episode() must be called before read_observation()")
        return self._obs

    def apply_action(self, action: np.ndarray) -> None:
        if self._obs is None:
            raise RuntimeError("start_episode() must be called before apply_action()")
        self._obs, reward, terminated, truncated, self.info = self.env.step(action)
        self._reward, self._terminated, self._truncated = float(reward), terminated, truncated

    def read_reward(self) -> float:
        return self._reward

    def episode_status(self) -> tuple[bool, bool]:
        return bool(self._terminated), bool(self._truncated)


@dataclass(frozen=True)
class LoopReport:
    """Timing and outcome of :func:`run_control_loop` (times in seconds).

    Attributes:
        steps: control steps run; rate_hz: the requested rate.
        missed_deadlines: steps whose work (read, act, apply, observe, and the episode
            restart when one ended) finished after the step's deadline.
        step_time_p50, step_time_p99, step_time_max: work time per step.
        start_lateness_max: latest start of a step after its scheduled time (the sleep
            overslept: OS scheduling); a miss with short work time comes from this.
        episode_returns: undiscounted return of every episode that ended.
        wall_time: total loop time.
    """

    steps: int
    rate_hz: float
    missed_deadlines: int
    step_time_p50: float
    step_time_p99: float
    step_time_max: float
    start_lateness_max: float
    episode_returns: tuple[float, ...]
    wall_time: float


def run_control_loop(controller: RobotController, policy: AdaptivePolicy, rate_hz: float,
                     steps: int, *, deterministic: bool = False,
                     on_episode_end: Callable[[int, float], None] | None = None,
                     clock: Callable[[], float] = time.perf_counter,
                     sleep: Callable[[float], None] = time.sleep) -> LoopReport:
    """Run ``steps`` control steps at ``rate_hz`` and report missed deadlines.

    Each step: read the observation, ``policy.act``, apply the action, read the reward
    and episode status, ``policy.observe`` (which swaps in an accepted adaptation at an
    episode end). When an episode ends, ``on_episode_end(index, return)`` is called (e.g.
    to start ``policy.adapt_async``) and the next episode starts. Deadlines are on an
    absolute schedule ``start + k / rate_hz``; after a miss the schedule restarts from
    now, so one overrun counts once.

    Raises:
        ValueError: non-positive ``rate_hz`` or negative ``steps``; and whatever the
            policy raises for a bad observation (a sensor fault stops the loop).
    """
    if not rate_hz > 0:
        raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    period = 1.0 / rate_hz
    work = np.zeros(steps)
    returns: list[float] = []
    episode_return = 0.0
    missed = 0
    late = 0.0
    controller.start_episode()
    start = anchor = clock()
    k = 0
    for i in range(steps):
        began = clock()
        obs = controller.read_observation()
        action = policy.act(obs, deterministic=deterministic)
        controller.apply_action(action)
        reward = controller.read_reward()
        terminated, truncated = controller.episode_status()
        policy.observe(obs, action, reward, terminated, truncated)
        episode_return += reward
        if terminated or truncated:
            returns.append(episode_return)
            if on_episode_end is not None:
                on_episode_end(len(returns) - 1, episode_return)
            episode_return = 0.0
            controller.start_episode()
        done = clock()
        work[i] = done - began
        late = max(late, began - (anchor + k * period))
        k += 1
        deadline = anchor + k * period
        if done > deadline:
            missed += 1
            anchor, k = done, 0
        else:
            sleep(deadline - done)
    p50, p99, worst = (np.percentile(work, [50, 99]).tolist() + [float(work.max())]
                       if steps else [0.0, 0.0, 0.0])
    return LoopReport(steps, float(rate_hz), missed, p50, p99, worst, late, tuple(returns),
                      clock() - start)
