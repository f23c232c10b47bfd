"""The safety rules of on-device adaptation (``docs/deploy.md``, Safety rules).

* :func:`as_float32` and :func:`check_observation`: values are checked after the cast to
  float32, the graphs' dtype (1e39 is finite in float64 but inf in float32).
* :func:`check_update`: an adapted update passes finite values, the update norm and the
  trust region (a line search on the step's approximate KL), or is rejected.
* :class:`UpdateTrial`: an applied update is on trial for some episodes, and rolled back
  if it does worse than the parameters before it.
* :func:`check_hidden_state`: a recurrent (RL2) policy's state is finite and bounded
  (:class:`deploy.recurrent.RecurrentPolicy` resets it otherwise).

numpy only; none of it is thread-safe (:class:`deploy.runtime.AdaptivePolicy` serialises).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Every safety rule's type and range: name -> (type, lower bound, bound excluded).
#: Numbers must be finite, integers at most :data:`MAX_RULE_INT`. The one range check of
#: the rules, for :class:`SafetyConfig` and for a bundle's recorded defaults.
SAFETY_RANGES: dict[str, tuple[type, float, bool]] = {
    "max_update_norm": (float, 0.0, True),
    "max_kl": (float, 0.0, True),
    "max_backtracks": (int, 0, False),
    "min_episodes": (int, 1, False),
    "trial_episodes": (int, 0, False),
    "worse_margin": (float, 0.0, False),
}
MAX_RULE_INT = 1_000_000


def check_rule(name: str, value: Any) -> float | int:
    """``value`` of the safety rule ``name`` if it is of its type and in its range
    (:data:`SAFETY_RANGES`); ``ValueError`` naming the rule otherwise."""
    kind, low, low_open = SAFETY_RANGES[name]
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or not (
                low <= value <= MAX_RULE_INT):
            raise ValueError(f"{name} must be an integer in [{low:g}, {MAX_RULE_INT}], "
                             f"got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and (value > low if low_open else value >= low)):
        raise ValueError(f"{name} must be a finite number {'>' if low_open else '>='} "
                         f"{low:g}, got {value!r}")
    return float(value)


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
        for name in SAFETY_RANGES:
            check_rule(name, getattr(self, name))


# ---------------------------------------------------------------- float32 values
def as_float32(value: Any) -> np.ndarray:
    """``value`` cast to float32 (what the graphs see); overflow gives inf, not a warning."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(value, dtype=np.float32)


def check_observation(obs: Any, obs_dim: int) -> np.ndarray:
    """``obs`` (``[obs_dim]``, float32 or float64) as the graph's float32, checked after
    the cast.

    Raises:
        ValueError: a non-floating dtype, another shape, or NaN/inf in float32.
    """
    if not isinstance(obs, np.ndarray):
        obs = np.asarray(obs)
    if not np.issubdtype(obs.dtype, np.floating):
        raise ValueError(f"observation dtype must be floating point (float32/float64), "
                         f"got {obs.dtype}")
    if obs.shape != (obs_dim,):
        raise ValueError(f"observation must have shape ({obs_dim},), got {obs.shape}")
    cast = as_float32(obs)
    if not np.isfinite(cast).all():
        raise ValueError(f"observation contains NaN or inf (in float32, the policy's "
                         f"dtype) at indices {np.flatnonzero(~np.isfinite(cast)).tolist()}")
    return cast


# ---------------------------------------------------------------- recurrent state
#: Largest absolute value of a recurrent (RL2) policy's hidden state entry: a GRU's state
#: is a convex combination of tanh values and its previous state, so it stays in (-1, 1)
#: from a zero start; the margin covers float32 rounding.
HIDDEN_STATE_BOUND = 1.0 + 1e-4


def check_hidden_state(h: np.ndarray, bound: float = HIDDEN_STATE_BOUND) -> str | None:
    """Why the hidden state ``h`` may not be used (non-finite, or an entry beyond
    ``bound``), or None if it may."""
    if not np.isfinite(h).all():
        return "the hidden state is not finite"
    largest = float(np.abs(h).max(initial=0.0))
    if largest > bound:
        return f"a hidden state entry ({largest:.4g}) is beyond the bound {bound:g}"
    return None


# ---------------------------------------------------------------- the update
def approx_kl(log_ratio: np.ndarray) -> float:
    """Approximate ``KL(old || new)`` (nats) from samples of the old policy: the
    non-negative estimator ``mean((r - 1) - log r)``, ``log r = logp_new - logp_old``
    ``[N]``; the numpy twin of :func:`metarobot.core.inner.approx_kl` (unit weights)."""
    return float(np.mean(np.expm1(log_ratio) - log_ratio))


@dataclass(frozen=True)
class UpdateCheck:
    """The verdict of :func:`check_update` on one adapted update.

    Attributes:
        params: the parameters to use, float32 ``[P]``, read-only (the update scaled as
            the rules require); None when rejected.
        reason: ``"ok"`` with what was scaled, or why it was rejected.
        kl: approximate KL(pre || post) of the step taken (nats), NaN if not computed.
        update_norm: L2 norm of the raw update (before scaling), NaN if not computed.
        update_scale: factor applied to the raw update.
        backtracks: halvings of the step by the trust-region line search.
    """

    params: np.ndarray | None
    reason: str
    kl: float = math.nan
    update_norm: float = math.nan
    update_scale: float = 1.0
    backtracks: int = 0

    @property
    def accepted(self) -> bool:
        return self.params is not None


def check_update(config: SafetyConfig, params: np.ndarray, new: np.ndarray, loss: float,
                 kl_of: Callable[[np.ndarray], float]) -> UpdateCheck:
    """Apply the update rules to ``params -> new`` (float32 ``[P]`` each).

    Non-finite ``new`` or ``loss`` is rejected; an update longer than
    ``max_update_norm`` is scaled down to it; then the trust region halves the step until
    ``kl_of(candidate)`` (the approximate KL in nats of the pre-update policy to the
    candidate, on the adaptation data) is at most ``max_kl``, or rejects it after
    ``max_backtracks`` halvings. An exception in ``kl_of`` is a rejection, never raised.
    """
    if not (np.isfinite(new).all() and math.isfinite(loss)):
        return UpdateCheck(None, "non-finite adapted parameters or loss; keeping the last "
                                 "good parameters")
    delta = new.astype(np.float64) - params
    norm = float(np.linalg.norm(delta))
    norm_scale = min(1.0, config.max_update_norm / norm) if norm > 0 else 1.0
    try:
        new, scale, kl, backtracks = _line_search(config, params, delta, norm_scale, kl_of)
    except Exception as err:  # a failed adaptation must never reach the control loop
        return UpdateCheck(None, f"adaptation failed: {type(err).__name__}: {err}",
                           update_norm=norm)
    values = {"kl": kl, "update_norm": norm, "update_scale": scale, "backtracks": backtracks}
    if not math.isfinite(kl) or kl > config.max_kl:
        return UpdateCheck(None, f"KL {kl:.4g} exceeds max_kl {config.max_kl:.4g} after "
                                 f"{backtracks} halvings of the step; keeping the last good "
                                 "parameters", **values)
    new.setflags(write=False)
    reason = "ok"
    if norm_scale < 1.0:
        reason += " (update scaled to max_update_norm)"
    if backtracks:
        reason += f" (step halved {backtracks} times to KL <= max_kl)"
    return UpdateCheck(new, reason, **values)


def _line_search(config: SafetyConfig, params: np.ndarray, delta: np.ndarray, scale: float,
                 kl_of: Callable[[np.ndarray], float]) -> tuple[np.ndarray, float, float, int]:
    """Trust region: halve the step ``scale * delta`` until its KL is at most ``max_kl``
    (at most ``max_backtracks`` times).

    Returns:
        ``(new_params, scale, kl, backtracks)`` of the last step tried.
    """
    backtracks = 0
    while True:
        new = (params + scale * delta).astype(np.float32)
        kl = kl_of(new)
        if (math.isfinite(kl) and kl <= config.max_kl) or backtracks >= config.max_backtracks:
            return new, scale, kl, backtracks
        scale *= 0.5
        backtracks += 1


# ---------------------------------------------------------------- the trial
def standard_error(values: Any) -> float:
    """Standard error of the mean: sample std (ddof 1) / sqrt(n); 0 for fewer than 2."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else 0.0


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


class UpdateTrial:
    """The trial rule: an applied update is kept after ``trial_episodes`` episodes unless
    their mean return falls below the before-returns' mean by more than ``worse_margin``
    standard errors; then what it replaced is restored.

    Attributes:
        report: the latest trial's :class:`TrialReport` (None before one).
        restore: what to restore if the running trial's update does worse (the value
            given to :meth:`start`); None when no trial runs.
    """

    def __init__(self) -> None:
        self.report: TrialReport | None = None
        self.restore: Any = None
        self._returns: list[float] = []

    @property
    def running(self) -> bool:
        return self.restore is not None

    @property
    def episodes_done(self) -> int:
        """Kept episodes counted by the running trial."""
        return len(self._returns)

    def start(self, config: SafetyConfig, before_returns: tuple[float, ...],
              restore: Any) -> None:
        """Put an applied update on trial (no-op with ``trial_episodes == 0``);
        ``before_returns`` are the returns of the episodes it was adapted on, ``restore``
        (not None) what to go back to if it does worse."""
        if config.trial_episodes == 0:
            return
        self.restore, self._returns = restore, []
        self.report = TrialReport(
            "on_trial", config.trial_episodes, before_returns,
            margin=config.worse_margin * standard_error(before_returns),
            reason=f"on trial for {config.trial_episodes} episodes")

    def cancel(self, reason: str) -> None:
        """End a running trial without a verdict (state ``"cancelled"``)."""
        if self.running and self.report is not None:
            self.report = dataclasses.replace(self.report, state="cancelled", reason=reason)
        self.restore = None

    def count(self, episode_return: float) -> tuple[TrialReport, Any] | None:
        """Count a kept episode's return. When the trial ends with it, returns
        ``(verdict, restore)``: the report (state ``"kept"`` or ``"rolled_back"``) and the
        value given to :meth:`start`, for the caller to restore on ``"rolled_back"``."""
        if not self.running:
            return None
        self._returns.append(episode_return)
        report = dataclasses.replace(self.report, trial_returns=tuple(self._returns))
        self.report = report
        if len(self._returns) < report.episodes_needed:
            return None
        restore, self.restore = self.restore, None
        worse_by = report.before_mean - report.trial_mean
        if worse_by <= report.margin:
            self.report = dataclasses.replace(
                report, state="kept",
                reason=f"kept: mean return {report.trial_mean:.4g} over "
                       f"{len(self._returns)} episodes vs {report.before_mean:.4g} "
                       f"before (margin {report.margin:.3g})")
        else:
            self.report = dataclasses.replace(
                report, state="rolled_back",
                reason=f"adapted parameters rolled back: mean return "
                       f"{report.trial_mean:.4g} over {len(self._returns)} episodes is "
                       f"{worse_by:.4g} below the {report.before_mean:.4g} of the "
                       f"parameters before them (margin {report.margin:.3g})")
        return self.report, restore
