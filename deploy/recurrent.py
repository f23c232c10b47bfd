"""On-device runtime of a memory (RL2) bundle: act with a recurrent policy that adapts by
carrying its hidden state, no gradient step.

numpy + onnxruntime only (never imports torch). The controller protocol is
:class:`deploy.runtime.AdaptivePolicy`'s::

    policy = RecurrentPolicy.load("bundle/", family="reach", seed=0)
    policy.reset_task()                          # a new task: forget everything
    obs = robot.reset()
    while running:
        action = policy.act(obs)                 # [A] float32, clipped to the bounds
        next_obs, reward, terminated, truncated = robot.step(action)
        policy.observe(obs, action, reward, terminated, truncated)
        obs = robot.reset() if terminated or truncated else next_obs

Each :meth:`RecurrentPolicy.act` runs one step of ``policy.onnx`` on the observation, the
previous step's action (as sampled, before clipping), reward and episode-end flag, and
the hidden state ``[H]``; the new state is kept. An episode end (:meth:`observe` with
``terminated``/``truncated``, or :meth:`end_episode`) keeps the state, as in training,
where a trial's episodes share it; :meth:`reset_task` (alias :meth:`reset_adaptation`)
zeroes it for a new task. There is nothing to :meth:`adapt`: the state is the adaptation.

Safety (:mod:`deploy.safety`): observations and rewards are checked in float32 as for
:class:`~deploy.runtime.AdaptivePolicy`; a step whose outputs are not finite, or whose
new state leaves ``[-hidden_bound, hidden_bound]`` (a GRU's state stays in (-1, 1), so
anything else is a fault), resets the state to the start of a task, warns, counts the
reset in :attr:`RecurrentPolicy.state_resets` and acts from the reset state; if that is
not finite either, ``FloatingPointError``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from deploy.bundle import (
    Bundle,
    BundleError,
    check_default_params,
    check_embedded_metadata,
    check_graph_signatures,
    load_bundle,
    open_session,
)
from deploy.runtime import gaussian_log_prob
from deploy.safety import HIDDEN_STATE_BOUND, as_float32, check_hidden_state, check_observation

__all__ = ["RecurrentPolicy"]


class RecurrentPolicy:
    """A memory (RL2) bundle's recurrent policy on the device (see the module docstring).

    Create it with :meth:`load`.

    Args:
        bundle: a loaded memory bundle.
        seed: seed of the action-noise RNG (None: from the OS).
        threads: onnxruntime intra-op threads.
        hidden_bound: largest absolute value a hidden state entry may take.
    """

    def __init__(self, bundle: Bundle, *, seed: int | None = None, threads: int = 1,
                 hidden_bound: float = HIDDEN_STATE_BOUND) -> None:
        if bundle.spec.recurrent is None:
            raise BundleError(f"{bundle.path} adapts by gradient steps: run it with "
                              "deploy.runtime.AdaptivePolicy")
        self.bundle = bundle
        self.hidden_size = bundle.spec.recurrent.hidden_size
        self.hidden_bound = float(hidden_bound)
        self._rng = np.random.default_rng(seed)
        self._policy = open_session(bundle.policy_file, threads)
        check_embedded_metadata(bundle, self._policy, {})
        check_graph_signatures(bundle, self._policy, {})
        self._obs = np.zeros((1, bundle.obs_dim), np.float32)
        self.state_resets = 0  #: hidden-state resets after a fault (non-finite, out of bound)
        self.last_reset_reason: str | None = None
        self.last_logp = float("nan")  #: log-probability of the last sampled action
        self.reset_task()
        check_default_params(bundle, self._policy, self._feeds())

    @classmethod
    def load(cls, bundle_dir: str | Path, *, family: str | None = None,
             seed: int | None = None, threads: int = 1,
             hidden_bound: float = HIDDEN_STATE_BOUND) -> RecurrentPolicy:
        """Load and validate a memory bundle (:func:`deploy.bundle.load_bundle`)."""
        return cls(load_bundle(bundle_dir, family=family, check_models=False), seed=seed,
                   threads=threads, hidden_bound=hidden_bound)

    # ------------------------------------------------------------------ state
    @property
    def obs_dim(self) -> int:
        return self.bundle.obs_dim

    @property
    def act_dim(self) -> int:
        return self.bundle.act_dim

    @property
    def state(self) -> np.ndarray:
        """A copy of the hidden state ``[H]`` (float32)."""
        return self._h[0].copy()

    def reset_task(self) -> None:
        """Start a new task: hidden state, previous action, reward and episode-end flag 0."""
        self._h = np.zeros((1, self.hidden_size), np.float32)
        self._prev_action = np.zeros((1, self.act_dim), np.float32)
        self._prev_reward = np.zeros(1, np.float32)
        self._prev_done = np.zeros(1, np.float32)
        self._acted = False

    #: :class:`~deploy.runtime.AdaptivePolicy`'s name for forgetting what was learned.
    reset_adaptation = reset_task

    def reseed(self, seed: int | None) -> None:
        """Reseed the action-noise RNG."""
        self._rng = np.random.default_rng(seed)

    # ------------------------------------------------------------------ acting
    def _feeds(self) -> dict[str, np.ndarray]:
        return {"obs": self._obs, "prev_action": self._prev_action,
                "prev_reward": self._prev_reward, "prev_done": self._prev_done,
                "h_in": self._h}

    def forward(self, obs: np.ndarray, prev_action: np.ndarray, prev_reward: np.ndarray,
                prev_done: np.ndarray, h: np.ndarray,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Batched steps, no state kept: ``[B, O], [B, A], [B], [B], [B, H] -> (action_mean
        [B, A], log_std [B, A], h_out [B, H])``. No sampling, no clipping, no checks."""
        feeds = {"obs": obs, "prev_action": prev_action, "prev_reward": prev_reward,
                 "prev_done": prev_done, "h_in": h}
        mean, log_std, h_out = self._policy.run(
            None, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()})
        return mean, log_std, h_out

    def _fault(self, mean: np.ndarray, log_std: np.ndarray, h: np.ndarray) -> str | None:
        if not (np.isfinite(mean).all() and np.isfinite(log_std).all()):
            return "the policy produced a non-finite action"
        return check_hidden_state(h, self.hidden_bound)

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """The action for one observation, clipped to the action bounds; the hidden state
        moves on.

        Args:
            obs: ``[O]`` raw observation, float32 or float64, finite.
            deterministic: return the mean instead of a sample.

        Returns:
            ``[A]`` float32 action within the bundle's action bounds. The unclipped sample
            is the next step's ``prev_action``.

        Raises:
            ValueError: wrong observation shape, dtype, or non-finite values.
            FloatingPointError: non-finite outputs even from a reset state.
        """
        self._obs[0] = check_observation(obs, self.obs_dim)
        mean, log_std, h = self._policy.run(None, self._feeds())
        reason = self._fault(mean, log_std, h)
        if reason is not None:
            self._reset_after_fault(reason)
            mean, log_std, h = self._policy.run(None, self._feeds())
            if self._fault(mean, log_std, h) is not None:
                raise FloatingPointError(f"the recurrent policy fails even from a reset "
                                         f"state: {self._fault(mean, log_std, h)}")
        mean, log_std = mean[0], log_std[0]
        if deterministic:
            raw = mean.astype(np.float32)
        else:
            noise = self._rng.standard_normal(self.act_dim)
            raw = (mean + np.exp(log_std) * noise).astype(np.float32)
        self.last_logp = float(gaussian_log_prob(mean, log_std, raw))
        self._h = h
        self._prev_action[0] = raw
        self._acted = True
        return np.clip(raw, self.bundle.act_low, self.bundle.act_high).astype(np.float32)

    def _reset_after_fault(self, reason: str) -> None:
        self.state_resets += 1
        self.last_reset_reason = reason
        self.reset_task()
        warnings.warn(f"{reason}: hidden state reset to a new task's", RuntimeWarning,
                      stacklevel=3)

    # ------------------------------------------------------------------ recording
    def observe(self, obs: np.ndarray, action: np.ndarray, reward: float, terminated: bool,
                truncated: bool) -> None:
        """The reward that followed the last :meth:`act`; an episode end keeps the state.

        Raises:
            ValueError: no preceding act, or a reward that is not a finite float32 (the
                next step then sees reward 0).
        """
        if not self._acted:
            raise ValueError("observe() needs a preceding act()")
        self._acted = False
        value = as_float32(reward)
        finite = value.shape == () and bool(np.isfinite(value))
        self._prev_reward[0] = value if finite else 0.0
        self._prev_done[0] = 0.0
        if terminated or truncated:
            self.end_episode()
        if not finite:
            raise ValueError(f"reward must be a finite float32 scalar, got {reward!r}")

    def end_episode(self) -> None:
        """The episode ended: the next step is the first of the task's next episode (the
        state is kept; ``prev_done`` is 1)."""
        self._prev_done[0] = 1.0

    def adapt(self, steps: int = 1) -> None:
        """Nothing to do: a memory policy adapts as it acts (kept for the protocol)."""

    def close(self) -> None:
        """Nothing to release (the session is freed with the object)."""

    def __enter__(self) -> RecurrentPolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
