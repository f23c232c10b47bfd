"""The on-device runtime: act with an exported policy and adapt it to the task at hand.

numpy + onnxruntime only (never imports torch). Typical use::

    policy = AdaptivePolicy.load("bundle/", family="reach", seed=0)
    obs = robot.reset()
    while running:
        action = policy.act(obs)                      # [A] float32, clipped to the bounds
        next_obs, reward, terminated, truncated = robot.step(action)
        policy.observe(obs, action, reward, terminated, truncated)
        obs = robot.reset() if terminated or truncated else next_obs
        if episodes_done == E:
            report = policy.adapt(steps=1)           # or policy.adapt_async(1) -> Future

Adaptation uses the completed episodes recorded since the parameters last changed; it
computes advantages exactly as the trainer does (:func:`deploy.advantages.compute_advantages`)
and runs the bundle's adapt graph with the bundle's inner ``lr`` and ``clip``. The result
passes the safety rules (:class:`SafetyConfig`) or is rejected; accepted parameters are
swapped in at an episode boundary (at once if no episode is in progress), which also
clears the recorded episodes, since they were collected by the previous parameters.

Threading: ``act``/``observe``/``end_episode`` belong to one control thread; adaptation
runs in one worker thread (``adapt_async``), concurrently with acting (onnxruntime
releases the GIL while it computes). The worker keeps the normal CPU priority on
purpose: a lowered one lets any third busy process starve it while it holds the GIL,
and the control thread then waits for the GIL. Set ``OPENBLAS_NUM_THREADS=1`` in the
control process: the advantage fit's small solves gain nothing from BLAS threads, and
spinning BLAS threads steal the control thread's core. The measurements behind this:
``docs/deploy.md#runtime-api-deploy`` (Threads).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import threading
import time
import warnings
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploy.advantages import compute_advantages
from deploy.bundle import (
    Bundle,
    BundleError,
    Layout,
    check_embedded_metadata,
    check_graph_signatures,
    load_bundle,
    open_session,
    params_sha256,
)

PARAMS_FORMAT = "metarobot.params"
PARAMS_FORMAT_VERSION = 1
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _check_int(value: Any, name: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_float(value: Any, name: str, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and (value > 0 if positive else value >= 0)):
        raise ValueError(f"{name} must be a finite number {'>' if positive else '>='} 0, "
                         f"got {value!r}")


@dataclass(frozen=True)
class SafetyConfig:
    """Rules an adaptation must pass before its parameters are used, and kept.

    Attributes:
        max_update_norm: largest L2 norm of ``new_params - params``; a larger update is
            scaled down to this norm (not rejected).
        max_kl: trust region: largest approximate KL(pre-update || post-update) on the
            adaptation data (nats, estimator ``E[(r - 1) - log r]``). A step above it is
            halved (backtracking line search on the step size) until it is within;
            rejected only if ``max_backtracks`` halvings do not get there.
        max_backtracks: most halvings of the step in that line search (0: reject a step
            above ``max_kl`` at once).
        min_episodes: fewest completed episodes an adaptation needs.
        trial_episodes: episodes an applied update is on trial for (0: no trial). After
            them the update is kept only if their mean return is not below the mean
            return of the episodes it was adapted on (those of the parameters before it)
            by more than the margin; otherwise the runtime rolls back to the parameters
            before it.
        worse_margin: that margin, in standard errors of the before-episodes' mean
            return (their sample standard deviation / sqrt(count); 0 with one episode).
    """

    max_update_norm: float = 10.0
    max_kl: float = 1.0
    max_backtracks: int = 10
    min_episodes: int = 1
    trial_episodes: int = 3
    worse_margin: float = 1.0

    def __post_init__(self) -> None:
        _check_float(self.max_update_norm, "max_update_norm", positive=True)
        _check_float(self.max_kl, "max_kl", positive=True)
        _check_float(self.worse_margin, "worse_margin", positive=False)
        _check_int(self.max_backtracks, "max_backtracks", 0)
        _check_int(self.min_episodes, "min_episodes", 1)
        _check_int(self.trial_episodes, "trial_episodes", 0)


@dataclass(frozen=True)
class AdaptReport:
    """What one adaptation did.

    Attributes:
        accepted: the new parameters passed the safety rules.
        applied: they are already in use (False while waiting for the episode boundary,
            and always False when rejected: the previous parameters stay in use).
        reason: ``"ok"``, ``"ok (update scaled to max_update_norm)"``, or why it was
            rejected.
        steps: inner steps K; episodes, transitions: adaptation data used.
        loss: inner loss of the last step (before it), from the adapt graph.
        kl: approximate KL(pre || post) on the adaptation data (nats), or NaN.
        update_norm: L2 norm of the raw update ``||new - old||`` (before scaling).
        update_scale: factor applied to the update (1.0 unless the norm was clipped or
            the trust-region line search halved it).
        backtracks: halvings of the step by the trust-region line search.
        seconds: wall time of the adaptation.
    """

    accepted: bool
    applied: bool
    reason: str
    steps: int
    episodes: int = 0
    transitions: int = 0
    loss: float = math.nan
    kl: float = math.nan
    update_norm: float = math.nan
    update_scale: float = 1.0
    backtracks: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class TrialReport:
    """The trial of an applied update: is it doing worse than the parameters before it?

    Attributes:
        state: ``"on_trial"`` (collecting its episodes), ``"kept"``, ``"rolled_back"``
            (it did worse: the parameters before it are back in use), or ``"cancelled"``
            (``reset_adaptation``, ``load_params`` or a non-finite action ended it).
        episodes_needed: trial length (``SafetyConfig.trial_episodes``).
        before_returns: returns of the episodes the update was adapted on.
        trial_returns: returns of the completed episodes with the update so far.
        margin: how far (in return) the trial mean may fall below the before mean.
        reason: the verdict in words.
    """

    state: str
    episodes_needed: int
    before_returns: tuple[float, ...]
    trial_returns: tuple[float, ...] = ()
    margin: float = 0.0
    reason: str = ""

    @property
    def before_mean(self) -> float:
        return float(np.mean(self.before_returns))

    @property
    def trial_mean(self) -> float:
        return float(np.mean(self.trial_returns)) if self.trial_returns else math.nan


@dataclass
class _Episode:
    obs: list[np.ndarray] = field(default_factory=list)
    act: list[np.ndarray] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    rew: list[float] = field(default_factory=list)
    refused: bool = False  # a transition was refused: the episode has a gap, drop it

    @property
    def total(self) -> float:
        return float(np.sum(self.rew, dtype=np.float64))


@dataclass
class _Trial:
    """An applied update on trial, and what to restore if it does worse."""

    previous: np.ndarray
    previous_last_good: np.ndarray
    before_returns: tuple[float, ...]
    trial_returns: list[float] = field(default_factory=list)


def _as_float32(value: Any) -> np.ndarray:
    """``value`` cast to float32 (what the graphs see); overflow gives inf, not a warning."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(value, dtype=np.float32)


def standard_error(values: Any) -> float:
    """Standard error of the mean: sample std (ddof 1) / sqrt(n); 0 for fewer than 2."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else 0.0


def gaussian_log_prob(mean: np.ndarray, log_std: np.ndarray, act: np.ndarray) -> np.ndarray:
    """``log N(act; mean, exp(log_std)^2)`` summed over the last axis, in float64.

    Shapes: ``[..., A] -> [...]``.
    """
    mean, log_std = mean.astype(np.float64), log_std.astype(np.float64)
    z = (act.astype(np.float64) - mean) * np.exp(-log_std)
    return (-0.5 * z * z - log_std - _HALF_LOG_2PI).sum(-1)


def approx_kl(log_ratio: np.ndarray) -> float:
    """Approximate ``KL(old || new)`` (nats) from samples of the old policy: the
    non-negative estimator ``mean((r - 1) - log r)``, ``log r = logp_new - logp_old``
    ``[N]``; the numpy twin of :func:`metarobot.inner.approx_kl` (unit weights)."""
    return float(np.mean(np.expm1(log_ratio) - log_ratio))


class AdaptivePolicy:
    """An exported policy that acts and adapts on the device (see the module docstring).

    Create it with :meth:`load`.
    """

    def __init__(self, bundle: Bundle, *, safety: SafetyConfig | None = None,
                 seed: int | None = None, threads: int = 1, max_episodes: int = 1000) -> None:
        self.bundle = bundle
        self.safety = safety if safety is not None else SafetyConfig(**bundle.safety_defaults)
        self._rng = np.random.default_rng(seed)
        self._policy = open_session(bundle.policy_file, threads)
        self._adapt = {k: open_session(path, threads) for k, path in bundle.adapt_files.items()}
        self._check_sessions()
        self._obs_dim, self._act_dim = bundle.obs_dim, bundle.act_dim
        self._obs_buf = np.zeros((1, self._obs_dim), dtype=np.float32)
        self._lock = threading.Lock()
        self._params = bundle.params
        self._last_good = bundle.params
        self._next_params: np.ndarray | None = None
        self._version = 0  # bumped whenever the acting parameters change
        self._generation = 0  # bumped by reset_adaptation: stale adaptations are dropped
        self._episodes: deque[_Episode] = deque(maxlen=max_episodes)
        self._current = _Episode()
        self._episode_open = False
        self._pending: tuple[np.ndarray, np.ndarray, np.ndarray, float] | None = None
        self._next_before: tuple[float, ...] = ()  # before-returns of the waiting update
        self._trial: _Trial | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.rollbacks = 0  #: roll-backs: non-finite actions and updates that did worse
        self.dropped_episodes = 0  #: episodes not kept for adaptation (a refused value)
        self.last_report: AdaptReport | None = None
        #: The latest applied update's trial (see :class:`TrialReport`), None before one.
        self.trial_report: TrialReport | None = None

    @classmethod
    def load(cls, bundle_dir: str | Path, *, family: str | None = None,
             safety: SafetyConfig | None = None, seed: int | None = None, threads: int = 1,
             max_episodes: int = 1000) -> AdaptivePolicy:
        """Load and validate a bundle (see :func:`deploy.bundle.load_bundle`).

        Args:
            bundle_dir: the bundle directory, or the name of a shipped bundle (``"reach"``;
                see :func:`deploy.bundle.resolve_bundle`).
            family: expected task family; a bundle of another family raises BundleError.
            safety: adaptation safety rules (default: the bundle's recorded rules, e.g. a
                ``max_kl`` set from the adaptation KL seen in training, over the
                defaults of :class:`SafetyConfig`).
            seed: seed of the action-noise RNG (None: from the OS).
            threads: onnxruntime intra-op threads per session.
            max_episodes: most completed episodes kept for adaptation (oldest dropped).
        """
        if max_episodes < 1:
            raise ValueError(f"max_episodes must be >= 1, got {max_episodes}")
        return cls(load_bundle(bundle_dir, family=family, check_models=False), safety=safety,
                   seed=seed, threads=threads, max_episodes=max_episodes)

    def _check_sessions(self) -> None:
        b = self.bundle
        check_embedded_metadata(b, self._policy, self._adapt)
        check_graph_signatures(b, self._policy, self._adapt)
        # The policy's default params initializer must be the bundle's meta-learned params.
        probe = np.linspace(-1.0, 1.0, b.obs_dim, dtype=np.float32)[None]
        try:
            default = self._policy.run(None, {"obs": probe})
            explicit = self._policy.run(None, {"obs": probe, "params": b.params})
        except Exception as err:  # a graph that loads but cannot run (ORT's own types)
            raise BundleError(f"{b.policy_file} fails to run: {err}") from err
        if not all(np.array_equal(x, y) for x, y in zip(default, explicit)):
            raise BundleError(f"{b.policy_file}: its default parameters differ from "
                              f"{b.spec.params.file}")

    # ------------------------------------------------------------------ acting
    def reseed(self, seed: int | None) -> None:
        """Reseed the action-noise RNG (e.g. to replay the same noise when comparing two
        parameter vectors on the same episodes)."""
        self._rng = np.random.default_rng(seed)

    @property
    def params(self) -> np.ndarray:
        """A read-only copy of the parameters in use, float32 ``[P]``."""
        out = self._params.copy()
        out.setflags(write=False)
        return out

    @property
    def obs_dim(self) -> int:
        return self._obs_dim

    @property
    def act_dim(self) -> int:
        return self._act_dim

    @property
    def update_pending(self) -> bool:
        """An accepted update waits for the next episode boundary."""
        return self._next_params is not None

    @property
    def num_episodes(self) -> int:
        """Completed episodes recorded with the current parameters."""
        return len(self._episodes)

    def _check_obs(self, obs: Any) -> np.ndarray:
        """``obs`` as the graph's float32, checked after the cast (1e39 is finite in
        float64 but inf in float32)."""
        if not isinstance(obs, np.ndarray):
            obs = np.asarray(obs)
        if not np.issubdtype(obs.dtype, np.floating):
            raise ValueError(f"observation dtype must be floating point (float32/float64), "
                             f"got {obs.dtype}")
        if obs.shape != (self._obs_dim,):
            raise ValueError(f"observation must have shape ({self._obs_dim},), got {obs.shape}")
        cast = _as_float32(obs)
        if not np.isfinite(cast).all():
            raise ValueError(f"observation contains NaN or inf (in float32, the policy's "
                             f"dtype) at indices {np.flatnonzero(~np.isfinite(cast)).tolist()}")
        return cast

    def forward(self, obs: np.ndarray, params: np.ndarray | None = None,
                ) -> tuple[np.ndarray, np.ndarray]:
        """Batched policy outputs: ``obs [B, O] -> (action_mean [B, A], log_std [B, A])``.

        ``params`` defaults to the parameters in use. No sampling, no clipping.
        """
        obs = np.ascontiguousarray(obs, dtype=np.float32)
        if obs.ndim != 2 or obs.shape[1] != self._obs_dim:
            raise ValueError(f"obs must be [B, {self._obs_dim}], got {list(obs.shape)}")
        params = self._params if params is None else params
        mean, log_std = self._policy.run(None, {"obs": obs, "params": params})
        return mean, log_std

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """The action for one observation, clipped to the action bounds.

        Args:
            obs: ``[O]`` raw observation, float32 or float64, finite.
            deterministic: return the mean instead of a sample.

        Returns:
            ``[A]`` float32 action within ``[act_low, act_high]``. The (unclipped) sample
            and its log-probability are remembered for :meth:`observe`.

        Raises:
            ValueError: wrong observation shape, dtype, or non-finite values.
        """
        obs = self._check_obs(obs)
        with self._lock:
            params = self._params
            self._episode_open = True
        self._obs_buf[0] = obs
        mean, log_std = self._policy.run(None, {"obs": self._obs_buf, "params": params})
        # Roll back at most twice: to the previous parameters, then to the meta-learned.
        for _ in range(2):
            if np.isfinite(mean).all() and np.isfinite(log_std).all():
                break
            params = self._roll_back("the policy produced a non-finite action")
            mean, log_std = self._policy.run(None, {"obs": self._obs_buf, "params": params})
        else:
            if not (np.isfinite(mean).all() and np.isfinite(log_std).all()):
                raise FloatingPointError("the policy produces non-finite actions even with "
                                         "the meta-learned parameters")
        mean, log_std = mean[0], log_std[0]
        if deterministic:
            raw = mean
        else:
            noise = self._rng.standard_normal(self._act_dim)
            raw = (mean + np.exp(log_std) * noise).astype(np.float32)
        logp = float(gaussian_log_prob(mean, log_std, raw))
        action = np.clip(raw, self.bundle.act_low, self.bundle.act_high).astype(np.float32)
        self._pending = (self._obs_buf[0].copy(), raw.copy(), action, logp)
        return action.copy()

    def _roll_back(self, why: str) -> np.ndarray:
        with self._lock:
            self.rollbacks += 1
            self._params, self._last_good = self._last_good, self.bundle.params
            self._version += 1
            self._episodes.clear()
            self._current = _Episode()
            self._end_trial_locked("cancelled", f"{why}: rolled back")
            params = self._params
        warnings.warn(f"{why}: rolled back to the last good parameters", RuntimeWarning,
                      stacklevel=3)
        return params

    def observe(self, obs: np.ndarray, action: np.ndarray, reward: float, terminated: bool,
                truncated: bool) -> None:
        """Record the transition of the last :meth:`act` call.

        Args:
            obs: the observation that was passed to :meth:`act` (``[O]``).
            action: the action :meth:`act` returned (``[A]``).
            reward: the reward that followed (finite float).
            terminated, truncated: the episode ended; closes it, and swaps in an accepted
                update if one is waiting.

        Raises:
            ValueError: no preceding act, or obs/action are not the ones it saw/returned,
                or a reward that is not a finite float32. A refused reward drops the
                episode from the adaptation data (it would have a gap); the episode
                still ends at ``terminated``/``truncated``.
        """
        if self._pending is None:
            raise ValueError("observe() must follow act() for the same observation")
        seen_obs, raw, returned, logp = self._pending
        if not np.array_equal(_as_float32(obs), seen_obs):
            raise ValueError("observe(): obs is not the observation passed to the last act()")
        if not np.array_equal(_as_float32(action), returned):
            raise ValueError("observe(): action is not the action returned by the last act()")
        try:
            reward = float(reward)
        except (TypeError, ValueError):
            reward = math.nan
        if not np.isfinite(_as_float32(reward)):
            self._pending = None
            self._current.refused = True
            if terminated or truncated:
                self.end_episode()
            raise ValueError(f"observe(): reward must be finite in float32, got {reward}; "
                             "this episode will not be used for adaptation")
        self._pending = None
        episode = self._current
        episode.obs.append(seen_obs)
        episode.act.append(raw)
        episode.logp.append(logp)
        episode.rew.append(reward)
        if terminated or truncated:
            self.end_episode()

    def end_episode(self) -> None:
        """Close the current episode and swap in an accepted update if one is waiting.

        The episode is kept for adaptation if it has transitions, none was refused, and
        its rewards sum to a finite float32; otherwise it is dropped (counted in
        ``dropped_episodes``), and later episodes are unaffected. A kept episode also
        counts towards the trial of the update in use (see :class:`TrialReport`).
        """
        verdict = None
        with self._lock:
            episode = self._current
            if episode.rew:
                if episode.refused or not self._episode_is_finite(episode):
                    self.dropped_episodes += 1
                else:
                    self._episodes.append(episode)
                    verdict = self._count_trial_episode_locked(episode.total)
            self._current = _Episode()
            self._pending = None
            self._episode_open = False
            if self._next_params is not None:
                self._swap_locked(self._next_params, self._next_before)
        if verdict is not None and verdict.state == "rolled_back":
            warnings.warn(verdict.reason, RuntimeWarning, stacklevel=2)

    @staticmethod
    def _episode_is_finite(episode: _Episode) -> bool:
        """Every value, and the sum of absolute rewards (which bounds every discounted
        return the advantages compute), is finite in float32."""
        with np.errstate(over="ignore", invalid="ignore"):
            return bool(np.isfinite(np.sum(np.abs(_as_float32(episode.rew)), dtype=np.float32))
                        and np.isfinite(_as_float32(episode.logp)).all()
                        and np.isfinite(np.asarray(episode.act)).all())

    def _swap_locked(self, params: np.ndarray, before_returns: tuple[float, ...] = ()) -> None:
        """Use ``params`` from now on; an adapted update (``before_returns`` given: the
        returns of the episodes it was adapted on) goes on trial."""
        self._end_trial_locked("cancelled", "replaced by other parameters")
        if before_returns and self.safety.trial_episodes > 0:
            self._trial = _Trial(self._params, self._last_good, before_returns)
            self.trial_report = TrialReport(
                "on_trial", self.safety.trial_episodes, before_returns,
                margin=self._margin(before_returns),
                reason=f"on trial for {self.safety.trial_episodes} episodes")
        self._last_good, self._params = self._params, params
        self._next_params = None
        self._next_before = ()
        self._version += 1
        self._episodes.clear()  # collected by the previous parameters

    # ------------------------------------------------------------------ trial
    def _margin(self, before_returns: tuple[float, ...]) -> float:
        """How far the trial mean may fall below the before mean, in return."""
        return self.safety.worse_margin * standard_error(before_returns)

    def _end_trial_locked(self, state: str, reason: str) -> None:
        """Close a running trial without a verdict (``state`` ``"cancelled"``)."""
        if self._trial is not None and self.trial_report is not None:
            self.trial_report = dataclasses.replace(self.trial_report, state=state,
                                                    reason=reason)
        self._trial = None

    def _count_trial_episode_locked(self, episode_return: float) -> TrialReport | None:
        """Add a kept episode's return to the trial; at its end, keep the update or roll
        back to the parameters before it. Returns the verdict when one was reached."""
        trial = self._trial
        if trial is None:
            return None
        trial.trial_returns.append(episode_return)
        report = dataclasses.replace(self.trial_report, trial_returns=tuple(trial.trial_returns))
        self.trial_report = report
        if len(trial.trial_returns) < report.episodes_needed:
            return None
        self._trial = None
        worse_by = report.before_mean - report.trial_mean
        if worse_by <= report.margin:
            self.trial_report = dataclasses.replace(
                report, state="kept",
                reason=f"kept: mean return {report.trial_mean:.4g} over "
                       f"{len(trial.trial_returns)} episodes vs {report.before_mean:.4g} "
                       f"before (margin {report.margin:.3g})")
            return self.trial_report
        self.rollbacks += 1
        self._params, self._last_good = trial.previous, trial.previous_last_good
        self._version += 1
        self._episodes.clear()  # collected by the update that was rolled back
        self.trial_report = dataclasses.replace(
            report, state="rolled_back",
            reason=f"adapted parameters rolled back: mean return {report.trial_mean:.4g} "
                   f"over {len(trial.trial_returns)} episodes is {worse_by:.4g} below the "
                   f"{report.before_mean:.4g} of the parameters before them (margin "
                   f"{report.margin:.3g})")
        return self.trial_report

    # ------------------------------------------------------------------ adaptation
    def adapt(self, steps: int = 1) -> AdaptReport:
        """Adapt on the recorded episodes now (blocking); see :meth:`adapt_async`."""
        return self.adapt_async(steps).result()

    def adapt_async(self, steps: int = 1) -> Future[AdaptReport]:
        """Start an adaptation of ``steps`` inner steps in the worker thread.

        Uses the completed episodes recorded with the current parameters at the moment
        the worker starts it. ``steps`` runs the bundle's ``K = steps`` graph if it has
        one, else the one-step graph ``steps`` times (the same computation). The future
        never raises for a failed adaptation: it returns a rejected :class:`AdaptReport`.

        Raises:
            ValueError: ``steps`` is not a positive int.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="metarobot-adapt")
        return self._executor.submit(self._adapt_job, steps)

    def _reject(self, reason: str, steps: int, start: float, **values: Any) -> AdaptReport:
        report = AdaptReport(False, False, reason, steps, seconds=time.perf_counter() - start,
                             **values)
        self.last_report = report
        return report

    def _adapt_job(self, steps: int) -> AdaptReport:
        start = time.perf_counter()
        with self._lock:
            if self._next_params is not None:
                return self._reject("an accepted update is still waiting for the episode "
                                    "boundary", steps, start)
            if self._trial is not None:
                return self._reject(f"the last update is on trial ("
                                    f"{len(self._trial.trial_returns)} of "
                                    f"{self.safety.trial_episodes} episodes); adapt after "
                                    "its verdict", steps, start)
            episodes = list(self._episodes)
            params, version, generation = self._params, self._version, self._generation
        if len(episodes) < self.safety.min_episodes:
            return self._reject(f"{len(episodes)} completed episodes recorded with the current "
                                f"parameters, need {self.safety.min_episodes}", steps, start)
        try:
            new, loss, data = self._inner_steps(params, episodes, steps)
        except Exception as err:  # a failed adaptation must never reach the control loop
            return self._reject(f"adaptation failed: {type(err).__name__}: {err}", steps, start,
                                episodes=len(episodes))
        counts = {"episodes": len(episodes), "transitions": int(data["obs"].shape[0]),
                  "loss": loss}
        if not (np.isfinite(new).all() and math.isfinite(loss)):
            return self._reject("non-finite adapted parameters or loss; keeping the last good "
                                "parameters", steps, start, **counts)
        delta = new.astype(np.float64) - params
        norm = float(np.linalg.norm(delta))
        norm_scale = min(1.0, self.safety.max_update_norm / norm) if norm > 0 else 1.0
        try:
            new, scale, kl, backtracks = self._line_search(params, delta, norm_scale, data)
        except Exception as err:  # as above: reported, never raised
            return self._reject(f"adaptation failed: {type(err).__name__}: {err}", steps, start,
                                **counts, update_norm=norm)
        values = {**counts, "kl": kl, "update_norm": norm, "update_scale": scale,
                  "backtracks": backtracks}
        if not math.isfinite(kl) or kl > self.safety.max_kl:
            return self._reject(f"KL {kl:.4g} exceeds max_kl {self.safety.max_kl:.4g} after "
                                f"{backtracks} halvings of the step; keeping the last good "
                                "parameters", steps, start, **values)
        new.setflags(write=False)
        before = tuple(e.total for e in episodes)
        with self._lock:
            if self._generation != generation or self._version != version:
                return self._reject("the parameters changed while adapting (reset or load); "
                                    "result discarded", steps, start, **values)
            self._next_params, self._next_before = new, before
            applied = not self._episode_open
            if applied:
                self._swap_locked(new, before)
        reason = "ok"
        if norm_scale < 1.0:
            reason += " (update scaled to max_update_norm)"
        if backtracks:
            reason += f" (step halved {backtracks} times to KL <= max_kl)"
        report = AdaptReport(True, applied, reason, steps,
                             seconds=time.perf_counter() - start, **values)
        self.last_report = report
        return report

    def recorded_episodes(self) -> list[dict[str, np.ndarray]]:
        """Copies of the completed episodes that the next adaptation would use.

        Each is ``{"obs": [T, O], "act": [T, A], "logp": [T], "rew": [T]}`` (float32), with
        ``act`` the sampled actions before clipping and ``logp`` their log-probabilities
        under the parameters that acted.
        """
        with self._lock:
            episodes = list(self._episodes)
        return [{"obs": np.array(e.obs), "act": np.array(e.act),
                 "logp": np.array(e.logp, dtype=np.float32),
                 "rew": np.array(e.rew, dtype=np.float32)} for e in episodes]

    def _adaptation_data(self, episodes: list[_Episode]) -> dict[str, np.ndarray]:
        """The adapt graph's data inputs ``obs [N, O], act [N, A], adv [N], old_logp [N],
        weight [N]`` (float32) over the real steps of ``episodes``, advantages from
        :func:`deploy.advantages.compute_advantages` on the episodes padded to the longest
        (with the bundle's gamma, lam and normalize)."""
        horizon = max(len(e.rew) for e in episodes)
        n_ep = len(episodes)
        obs = np.zeros((n_ep, horizon, self._obs_dim), dtype=np.float32)
        act = np.zeros((n_ep, horizon, self._act_dim), dtype=np.float32)
        rew = np.zeros((n_ep, horizon), dtype=np.float32)
        logp = np.zeros((n_ep, horizon), dtype=np.float32)
        mask = np.zeros((n_ep, horizon), dtype=np.float32)
        for i, e in enumerate(episodes):
            t = len(e.rew)
            obs[i, :t], act[i, :t], rew[i, :t] = e.obs, e.act, e.rew
            logp[i, :t], mask[i, :t] = e.logp, 1.0
        inner = self.bundle.inner
        adv = compute_advantages(obs, rew, mask, inner.gamma, inner.lam,
                                 normalize=inner.normalize)
        real = mask > 0
        return {"obs": obs[real], "act": act[real], "adv": adv[real].astype(np.float32),
                "old_logp": logp[real], "weight": np.ones(int(real.sum()), dtype=np.float32)}

    def _inner_steps(self, params: np.ndarray, episodes: list[_Episode],
                     steps: int) -> tuple[np.ndarray, float, dict[str, np.ndarray]]:
        data = self._adaptation_data(episodes)
        clip = np.asarray(self.bundle.clip, dtype=np.float32)
        if steps in self._adapt:
            graph, calls = self._adapt[steps], 1
        else:
            graph, calls = self._adapt[1], steps
        new = params
        loss = math.nan
        for _ in range(calls):
            new, loss_out, _ = graph.run(None, {"params": new, **data, "lr": self.bundle.lr,
                                                "clip": clip})
            loss = float(loss_out)
        return new, loss, data

    def _line_search(self, params: np.ndarray, delta: np.ndarray, scale: float,
                     data: Mapping[str, np.ndarray]) -> tuple[np.ndarray, float, float, int]:
        """Trust region: halve the step ``scale * delta`` until its KL on the adaptation
        data is at most ``max_kl`` (at most ``max_backtracks`` times).

        Returns:
            ``(new_params, scale, kl, backtracks)`` of the last step tried.
        """
        backtracks = 0
        while True:
            new = (params + scale * delta).astype(np.float32)
            kl = self._kl(new, data)
            if (math.isfinite(kl) and kl <= self.safety.max_kl) or \
                    backtracks >= self.safety.max_backtracks:
                return new, scale, kl, backtracks
            scale *= 0.5
            backtracks += 1

    def _kl(self, new: np.ndarray, data: Mapping[str, np.ndarray]) -> float:
        """Approximate KL(pre-update || new) on the adaptation data, ``E[(r - 1) - log r]``
        (``old_logp`` was recorded under the pre-update parameters: they acted)."""
        mean, log_std = self._policy.run(None, {"obs": data["obs"], "params": new})
        log_ratio = gaussian_log_prob(mean, log_std, data["act"]) - data["old_logp"]
        return approx_kl(log_ratio)

    # ------------------------------------------------------------------ parameters
    def reset_adaptation(self) -> None:
        """Back to the meta-learned parameters; clears all recorded data, the current
        episode and any waiting update (a running adaptation's result is discarded)."""
        with self._lock:
            self._generation += 1
            self._version += 1
            self._end_trial_locked("cancelled", "reset_adaptation()")
            self._params = self._last_good = self.bundle.params
            self._next_params = None
            self._episodes.clear()
            self._current = _Episode()
            self._pending = None
            self._episode_open = False

    def save_params(self, path: str | Path) -> Path:
        """Save the parameters in use (``.npz``: ``params`` float32 [P] and ``meta`` JSON
        naming the bundle family, layout and meta-learned parameter hash). Atomic."""
        path = Path(path)
        params = self._params
        meta = {"format": PARAMS_FORMAT, "format_version": PARAMS_FORMAT_VERSION,
                "family": self.bundle.family, "env_id": self.bundle.env_id,
                "layout": self.bundle.layout.to_dict(),
                "base_params_sha256": self.bundle.spec.params.sha256,
                "sha256": params_sha256(params)}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, params=params, meta=np.asarray(json.dumps(meta)))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def load_params(self, path: str | Path) -> None:
        """Use parameters saved by :meth:`save_params` (e.g. adapted earlier).

        Raises:
            BundleError: unreadable file, another format, family, layout or meta-learned
                parameters, a hash mismatch, or non-finite values.
            RuntimeError: called during an episode (call :meth:`end_episode` first).
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                params, meta = data["params"], json.loads(str(data["meta"]))
        except (OSError, ValueError, KeyError) as err:
            raise BundleError(f"{path} is not a readable metarobot parameter file: {err}") from err
        b = self.bundle
        if not isinstance(meta, dict) or meta.get("format") != PARAMS_FORMAT:
            raise BundleError(f"{path} is not a metarobot parameter file")
        if meta.get("format_version") != PARAMS_FORMAT_VERSION:
            raise BundleError(f"{path} has format version {meta.get('format_version')!r}, "
                              f"this runtime reads {PARAMS_FORMAT_VERSION}")
        if meta.get("family") != b.family:
            raise BundleError(f"{path} holds parameters of family {meta.get('family')!r}, the "
                              f"bundle is {b.family!r}")
        if Layout.from_dict(meta.get("layout", {})) != b.layout:
            raise BundleError(f"{path}: parameter layout differs from the bundle's")
        if meta.get("base_params_sha256") != b.spec.params.sha256:
            raise BundleError(f"{path} was adapted from other meta-learned parameters than "
                              "this bundle's")
        if params.dtype != np.float32 or params.shape != (b.layout.size,):
            raise BundleError(f"{path}: params must be float32 [{b.layout.size}], got "
                              f"{params.dtype} {list(params.shape)}")
        if params_sha256(params) != meta.get("sha256"):
            raise BundleError(f"{path}: params do not match their SHA-256 (corrupt)")
        if not np.isfinite(params).all():
            raise BundleError(f"{path}: params contain NaN or inf")
        params = params.copy()
        params.setflags(write=False)
        with self._lock:
            if self._episode_open:
                raise RuntimeError("load_params() during an episode; call end_episode() first")
            self._next_params = None
            self._generation += 1
            self._end_trial_locked("cancelled", "load_params()")
            self._swap_locked(params)

    def close(self) -> None:
        """Stop the adaptation worker (waits for a running adaptation)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> AdaptivePolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
