"""Episode recording: the transitions the policy acted on, kept for adaptation.

:class:`EpisodeRecorder` pairs each ``act`` with its ``observe``, refuses values that are
not finite in float32, and keeps the completed episodes that an adaptation may use;
:func:`adaptation_data` turns them into the adapt graph's inputs, with advantages computed
exactly as the trainer does. numpy only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deploy.advantages import compute_advantages
from deploy.bundle import InnerSpec
from deploy.safety import as_float32


@dataclass
class Episode:
    """One episode's transitions: ``obs`` ``[O]`` float32, ``act`` ``[A]`` float32 (the
    sampled action before clipping), ``logp`` its log-probability under the parameters
    that acted, ``rew`` the reward that followed."""

    obs: list[np.ndarray] = field(default_factory=list)
    act: list[np.ndarray] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    rew: list[float] = field(default_factory=list)
    refused: bool = False  # a transition was refused: the episode has a gap, drop it
    #: the episode's latent ``[C]`` float32 and its log-density under the context that
    #: drew it (a bundle with ``inner.latent_std``), else None and NaN.
    latent: np.ndarray | None = None
    latent_logp: float = float("nan")

    @property
    def total(self) -> float:
        """The return (undiscounted sum of rewards, float64)."""
        return float(np.sum(self.rew, dtype=np.float64))

    def is_finite(self) -> bool:
        """Every value, and the sum of absolute rewards (which bounds every discounted
        return the advantages compute), is finite in float32."""
        with np.errstate(over="ignore", invalid="ignore"):
            return bool(np.isfinite(np.sum(np.abs(as_float32(self.rew)), dtype=np.float32))
                        and np.isfinite(as_float32(self.logp)).all()
                        and np.isfinite(np.asarray(self.act)).all())

    def arrays(self) -> dict[str, np.ndarray]:
        """Copies: ``{"obs": [T, O], "act": [T, A], "logp": [T], "rew": [T]}`` (float32),
        and ``"latent": [C]`` for an episode that acted on a latent."""
        out = {"obs": np.array(self.obs), "act": np.array(self.act),
               "logp": np.array(self.logp, dtype=np.float32),
               "rew": np.array(self.rew, dtype=np.float32)}
        if self.latent is not None:
            out["latent"] = self.latent.copy()
        return out


class EpisodeRecorder:
    """The current episode and the completed episodes kept for adaptation.

    Not thread-safe: the owner serialises access (the completed episodes are read by the
    adaptation worker).

    Attributes:
        dropped: completed episodes not kept (a refused value, or rewards whose sum
            overflows float32).
    """

    def __init__(self, max_episodes: int) -> None:
        self._completed: deque[Episode] = deque(maxlen=max_episodes)  # oldest dropped
        self._current = Episode()
        self._pending: tuple[np.ndarray, np.ndarray, np.ndarray, float] | None = None
        self._open = False
        self.dropped = 0

    @property
    def episode_open(self) -> bool:
        """An episode is running (acted on since the last :meth:`close_episode`)."""
        return self._open

    @property
    def num_completed(self) -> int:
        return len(self._completed)

    def completed(self) -> list[Episode]:
        """The completed episodes kept, oldest first (a new list; the episodes are shared)."""
        return list(self._completed)

    def open_episode(self) -> None:
        """An action is being computed: the episode is running from now on."""
        self._open = True

    def remember(self, obs: np.ndarray, raw: np.ndarray, action: np.ndarray,
                 logp: float) -> None:
        """Remember an act, for the :meth:`record` that follows: the observation ``[O]``
        and the sample ``raw`` ``[A]`` it acted on, the clipped ``action`` ``[A]`` it
        returned (float32 each) and ``logp``, the log-probability of ``raw``."""
        self._pending = (obs, raw, action, logp)

    def record(self, obs: Any, action: Any, reward: Any) -> str | None:
        """Record the remembered act's transition, with the ``reward`` that followed.

        Returns:
            None, or why the reward was refused (not a finite float32): the episode is
            then marked refused, and :meth:`close_episode` drops it.

        Raises:
            ValueError: nothing remembered, or ``obs``/``action`` are not the remembered
                ones.
        """
        if self._pending is None:
            raise ValueError("observe() must follow act() for the same observation")
        seen_obs, raw, returned, logp = self._pending
        if not np.array_equal(as_float32(obs), seen_obs):
            raise ValueError("observe(): obs is not the observation passed to the last act()")
        if not np.array_equal(as_float32(action), returned):
            raise ValueError("observe(): action is not the action returned by the last act()")
        self._pending = None
        try:
            reward = float(reward)
        except (TypeError, ValueError):
            reward = float("nan")
        if not np.isfinite(as_float32(reward)):
            self._current.refused = True
            return (f"observe(): reward must be finite in float32, got {reward}; this "
                    "episode will not be used for adaptation")
        episode = self._current
        episode.obs.append(seen_obs)
        episode.act.append(raw)
        episode.logp.append(logp)
        episode.rew.append(reward)
        return None

    def close_episode(self) -> Episode | None:
        """End the current episode; returns it if it was kept (it has transitions, none
        refused, all finite), else counts it in :attr:`dropped` (if it has transitions)."""
        episode, kept = self._current, None
        if episode.rew:
            if episode.refused or not episode.is_finite():
                self.dropped += 1
            else:
                self._completed.append(episode)
                kept = episode
        self._current = Episode()
        self._pending = None
        self._open = False
        return kept

    def set_latent(self, latent: np.ndarray, logp: float) -> None:
        """The current episode acts on ``latent`` ``[C]`` (drawn with log-density
        ``logp``) from now on; its transitions so far, if any, are dropped (they acted on
        another)."""
        self._current = Episode(latent=latent, latent_logp=float(logp))

    def discard_current(self) -> None:
        """Drop the current episode's transitions so far (they came from parameters that
        are no longer in use); the episode itself goes on."""
        self._current = Episode()

    def clear(self) -> None:
        """Drop the completed episodes (collected by parameters no longer in use)."""
        self._completed.clear()

    def reset(self) -> None:
        """Drop everything: completed episodes, the current one, the remembered act."""
        self._completed.clear()
        self._current = Episode()
        self._pending = None
        self._open = False


def adaptation_data(episodes: list[Episode], obs_dim: int, act_dim: int,
                    inner: InnerSpec) -> dict[str, np.ndarray]:
    """The adapt graph's data inputs ``obs [N, O], act [N, A], adv [N], old_logp [N],
    weight [N]`` (float32) over the real steps of ``episodes``, advantages from
    :func:`deploy.advantages.compute_advantages` on the episodes padded to the longest
    (with the bundle's gamma, lam and normalize).

    ``weight`` is 1 on every step, except with the ``"dynamics"`` inner loss: there it is
    the transition weight, 1 where the next row is the next step of the same episode and
    0 on each episode's last step (which has no recorded successor), as the trainer's
    :func:`metarobot.core.inner.transition_weights`.

    With ``inner.latent_std`` (every episode then has a latent) also the latent adapt
    graph's :data:`deploy.bundle.LATENT_ADAPT_INPUTS`: ``latent [E, C]``,
    ``latent_old_logp [E]``, ``latent_adv [E]`` (each episode's return standardised over
    the episodes, as :func:`metarobot.core.inner.standardized_returns`) and ``episode
    [E, N]`` (1 where row n is a step of episode e)."""
    horizon = max(len(e.rew) for e in episodes)
    n_ep = len(episodes)
    obs = np.zeros((n_ep, horizon, obs_dim), dtype=np.float32)
    act = np.zeros((n_ep, horizon, act_dim), dtype=np.float32)
    rew = np.zeros((n_ep, horizon), dtype=np.float32)
    logp = np.zeros((n_ep, horizon), dtype=np.float32)
    mask = np.zeros((n_ep, horizon), dtype=np.float32)
    for i, e in enumerate(episodes):
        t = len(e.rew)
        obs[i, :t], act[i, :t], rew[i, :t] = e.obs, e.act, e.rew
        logp[i, :t], mask[i, :t] = e.logp, 1.0
    adv = compute_advantages(obs, rew, mask, inner.gamma, inner.lam,
                             normalize=inner.normalize)
    real = mask > 0
    if inner.loss == "dynamics":
        weight = (mask * np.concatenate([mask[:, 1:], np.zeros_like(mask[:, :1])], 1))[real]
    else:
        weight = np.ones(int(real.sum()), dtype=np.float32)
    data = {"obs": obs[real], "act": act[real], "adv": adv[real].astype(np.float32),
            "old_logp": logp[real], "weight": weight.astype(np.float32)}
    if inner.latent_std is not None:
        if any(e.latent is None for e in episodes):
            raise ValueError("a bundle with a per-episode latent adapts on episodes that "
                             "each recorded their latent")
        returns = np.array([e.total for e in episodes], dtype=np.float64)
        latent_adv = (returns - returns.mean()) / (returns.std() + 1e-8)
        # Episode e's rows are the real steps of row e of the padded [E, T] arrays.
        rows = np.repeat(np.arange(n_ep), mask.sum(1).astype(np.int64))
        data.update(latent=np.stack([e.latent for e in episodes]).astype(np.float32),
                    latent_old_logp=np.array([e.latent_logp for e in episodes],
                                             dtype=np.float32),
                    latent_adv=latent_adv.astype(np.float32),
                    episode=(rows[None] == np.arange(n_ep)[:, None]).astype(np.float32))
    return data
