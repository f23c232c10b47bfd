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

A bundle whose policy draws a per-episode latent (``inner.latent_std``) acts each episode
with its context replaced by a latent drawn at the episode's first act, and records it.

Adaptation uses the completed episodes recorded since the parameters last changed; it
computes advantages exactly as the trainer does (:func:`deploy.advantages.compute_advantages`)
and runs the bundle's adapt graph with the bundle's inner ``lr`` and ``clip``. The result
passes the safety rules (:class:`SafetyConfig`) or is rejected; accepted parameters are
swapped in at an episode boundary (at once if no episode is in progress), which also
clears the recorded episodes, since they were collected by the previous parameters.

:class:`AdaptivePolicy` acts, owns the parameters in use and the adaptation worker, and
composes one piece per other responsibility: :class:`deploy.recorder.EpisodeRecorder`
(episodes and the adapt graph's data), :mod:`deploy.safety` (float32 checks, the update
rules with the trust region, :class:`deploy.safety.UpdateTrial`) and
:mod:`deploy.params_file` (saved parameters).

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

import math
import threading
import time
import warnings
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from deploy.params_file import read_params_file, write_params_file
from deploy.recorder import EpisodeRecorder, adaptation_data
from deploy.safety import (
    SafetyConfig,
    TrialReport,
    UpdateTrial,
    approx_kl,
    check_observation,
    check_update,
    standard_error,
)

# Re-exported: the public names of the runtime, wherever they are defined.
__all__ = ["AdaptReport", "AdaptivePolicy", "SafetyConfig", "TrialReport", "approx_kl",
           "gaussian_log_prob", "standard_error"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


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


def gaussian_log_prob(mean: np.ndarray, log_std: np.ndarray, act: np.ndarray) -> np.ndarray:
    """``log N(act; mean, exp(log_std)^2)`` summed over the last axis, in float64.

    Shapes: ``[..., A] -> [...]``.
    """
    mean, log_std = mean.astype(np.float64), log_std.astype(np.float64)
    z = (act.astype(np.float64) - mean) * np.exp(-log_std)
    return (-0.5 * z * z - log_std - _HALF_LOG_2PI).sum(-1)


class AdaptivePolicy:
    """An exported policy that acts and adapts on the device (see the module docstring).

    Create it with :meth:`load`.
    """

    def __init__(self, bundle: Bundle, *, safety: SafetyConfig | None = None,
                 seed: int | None = None, threads: int = 1, max_episodes: int = 1000) -> None:
        if bundle.adaptation != "gradient":
            raise BundleError(f"{bundle.path} adapts by memory (an RL2 bundle): run it with "
                              "deploy.recurrent.RecurrentPolicy")
        self.bundle = bundle
        self.safety = safety if safety is not None else SafetyConfig(**bundle.safety_defaults)
        self._rng = np.random.default_rng(seed)
        self._policy = open_session(bundle.policy_file, threads)
        self._adapt = {k: open_session(path, threads) for k, path in bundle.adapt_files.items()}
        self._check_sessions()
        self._obs_dim, self._act_dim = bundle.obs_dim, bundle.act_dim
        self._obs_buf = np.zeros((1, self._obs_dim), dtype=np.float32)
        # The lock guards what the control thread and the adaptation worker share: the
        # parameters below, the recorder's completed episodes and the trial.
        self._lock = threading.Lock()
        self._params = bundle.params
        self._last_good = bundle.params  # what a non-finite action rolls back to
        self._next_params: np.ndarray | None = None  # accepted, waiting for the boundary
        self._next_before: tuple[float, ...] = ()  # before-returns of the waiting update
        self._version = 0  # bumped whenever the acting parameters change
        self._generation = 0  # bumped by reset_adaptation: stale adaptations are dropped
        self._recorder = EpisodeRecorder(max_episodes)
        # A per-episode latent (inner.latent_std): the episode acts with its context
        # replaced by z ~ N(context, sigma^2), drawn at its first act and again whenever
        # the parameters change within it (its transitions so far are then dropped).
        self._latent_std = bundle.inner.latent_std
        self._context = bundle.context_slice if self._latent_std is not None else None
        self._acting: np.ndarray = bundle.params  # parameters with the episode's latent
        self._acting_version = -1  # the _version they were drawn for
        self._trial = UpdateTrial()
        self._executor: ThreadPoolExecutor | None = None
        self.rollbacks = 0  #: roll-backs: non-finite actions and updates that did worse
        self.last_report: AdaptReport | None = None

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
        probe = np.linspace(-1.0, 1.0, b.obs_dim, dtype=np.float32)[None]
        check_default_params(b, self._policy, {"obs": probe})

    # ------------------------------------------------------------------ state
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
        return self._recorder.num_completed

    @property
    def dropped_episodes(self) -> int:
        """Episodes not kept for adaptation (a refused value, or rewards whose sum
        overflows float32)."""
        return self._recorder.dropped

    @property
    def trial_report(self) -> TrialReport | None:
        """The latest applied update's trial (see :class:`TrialReport`), None before one."""
        return self._trial.report

    # ------------------------------------------------------------------ acting
    def reseed(self, seed: int | None) -> None:
        """Reseed the action-noise RNG (e.g. to replay the same noise when comparing two
        parameter vectors on the same episodes)."""
        self._rng = np.random.default_rng(seed)

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
        obs = check_observation(obs, self._obs_dim)
        with self._lock:
            params = self._acting_params_locked(deterministic)
            self._recorder.open_episode()
        self._obs_buf[0] = obs
        mean, log_std = self._policy.run(None, {"obs": self._obs_buf, "params": params})
        # Roll back at most twice: to the previous parameters, then to the meta-learned.
        for _ in range(2):
            if np.isfinite(mean).all() and np.isfinite(log_std).all():
                break
            params = self._roll_back("the policy produced a non-finite action", deterministic)
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
        self._recorder.remember(self._obs_buf[0].copy(), raw.copy(), action, logp)
        return action.copy()

    def _acting_params_locked(self, deterministic: bool) -> np.ndarray:
        """The parameters the next action uses: those in use, or with a per-episode latent
        those with the episode's latent as context (drawn at the episode's first act, or
        when the parameters changed since; the context itself when that act is
        ``deterministic``, as the trainer's deterministic episodes)."""
        if self._context is None:
            return self._params
        if self._recorder.episode_open and self._acting_version == self._version:
            return self._acting
        assert self._latent_std is not None
        context = self._params[self._context]
        noise = 0.0 if deterministic else self._rng.standard_normal(context.shape)
        latent = (context + self._latent_std * noise).astype(np.float32)
        log_std = np.full(context.shape, math.log(self._latent_std))
        self._recorder.set_latent(latent, float(gaussian_log_prob(context, log_std, latent)))
        self._acting = self._params.copy()
        self._acting[self._context] = latent
        self._acting_version = self._version
        return self._acting

    def _roll_back(self, why: str, deterministic: bool) -> np.ndarray:
        with self._lock:
            self.rollbacks += 1
            self._params, self._last_good = self._last_good, self.bundle.params
            self._version += 1
            self._recorder.clear()
            self._recorder.discard_current()
            self._trial.cancel(f"{why}: rolled back")
            params = self._acting_params_locked(deterministic)
        warnings.warn(f"{why}: rolled back to the last good parameters", RuntimeWarning,
                      stacklevel=3)
        return params

    # ------------------------------------------------------------------ recording
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
        refusal = self._recorder.record(obs, action, reward)
        if terminated or truncated:
            self.end_episode()
        if refusal is not None:
            raise ValueError(refusal)

    def end_episode(self) -> None:
        """Close the current episode and swap in an accepted update if one is waiting.

        The episode is kept for adaptation if it has transitions, none was refused, and
        its rewards sum to a finite float32; otherwise it is dropped (counted in
        ``dropped_episodes``), and later episodes are unaffected. A kept episode also
        counts towards the trial of the update in use (see :class:`TrialReport`).
        """
        verdict = None
        with self._lock:
            kept = self._recorder.close_episode()
            if kept is not None:
                verdict = self._count_trial_episode_locked(kept.total)
            if self._next_params is not None:
                self._swap_locked(self._next_params, self._next_before)
        if verdict is not None and verdict.state == "rolled_back":
            warnings.warn(verdict.reason, RuntimeWarning, stacklevel=2)

    def recorded_episodes(self) -> list[dict[str, np.ndarray]]:
        """Copies of the completed episodes that the next adaptation would use.

        Each is ``{"obs": [T, O], "act": [T, A], "logp": [T], "rew": [T]}`` (float32), with
        ``act`` the sampled actions before clipping and ``logp`` their log-probabilities
        under the parameters that acted; with a per-episode latent also ``"latent": [C]``,
        the context the episode acted with.
        """
        with self._lock:
            episodes = self._recorder.completed()
        return [e.arrays() for e in episodes]

    # ------------------------------------------------------------------ swaps and trial
    def _swap_locked(self, params: np.ndarray, before_returns: tuple[float, ...] = ()) -> None:
        """Use ``params`` from now on; an adapted update (``before_returns`` given: the
        returns of the episodes it was adapted on) goes on trial."""
        self._trial.cancel("replaced by other parameters")
        if before_returns:
            self._trial.start(self.safety, before_returns,
                              restore=(self._params, self._last_good))
        self._last_good, self._params = self._params, params
        self._next_params = None
        self._next_before = ()
        self._version += 1
        self._recorder.clear()  # collected by the previous parameters

    def _count_trial_episode_locked(self, episode_return: float) -> TrialReport | None:
        """Count a kept episode for the trial; at its end, keep the update or roll back to
        the parameters before it. Returns the verdict when one was reached."""
        ended = self._trial.count(episode_return)
        if ended is None:
            return None
        verdict, (previous, previous_last_good) = ended
        if verdict.state == "rolled_back":
            self.rollbacks += 1
            self._params, self._last_good = previous, previous_last_good
            self._version += 1
            self._recorder.clear()  # collected by the update that was rolled back
        return verdict

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
            if self._trial.running:
                return self._reject(f"the last update is on trial ("
                                    f"{self._trial.episodes_done} of "
                                    f"{self.safety.trial_episodes} episodes); adapt after "
                                    "its verdict", steps, start)
            episodes = self._recorder.completed()
            params, version, generation = self._params, self._version, self._generation
        if len(episodes) < self.safety.min_episodes:
            return self._reject(f"{len(episodes)} completed episodes recorded with the current "
                                f"parameters, need {self.safety.min_episodes}", steps, start)
        try:
            data = adaptation_data(episodes, self._obs_dim, self._act_dim, self.bundle.inner)
            new, loss = self._inner_steps(params, data, steps)
        except Exception as err:  # a failed adaptation must never reach the control loop
            return self._reject(f"adaptation failed: {type(err).__name__}: {err}", steps, start,
                                episodes=len(episodes))
        counts = {"episodes": len(episodes), "transitions": int(data["obs"].shape[0]),
                  "loss": loss}
        check = check_update(self.safety, params, new, loss, lambda p: self._kl(params, p, data))
        values = {**counts, "kl": check.kl, "update_norm": check.update_norm,
                  "update_scale": check.update_scale, "backtracks": check.backtracks}
        if not check.accepted:
            return self._reject(check.reason, steps, start, **values)
        before = tuple(e.total for e in episodes)
        with self._lock:
            if self._generation != generation or self._version != version:
                return self._reject("the parameters changed while adapting (reset or load); "
                                    "result discarded", steps, start, **values)
            self._next_params, self._next_before = check.params, before
            applied = not self._recorder.episode_open
            if applied:
                self._swap_locked(check.params, before)
        report = AdaptReport(True, applied, check.reason, steps,
                             seconds=time.perf_counter() - start, **values)
        self.last_report = report
        return report

    def _inner_steps(self, params: np.ndarray, data: Mapping[str, np.ndarray],
                     steps: int) -> tuple[np.ndarray, float]:
        """``steps`` inner steps from ``params`` on ``data``: ``(new params [P], loss of
        the last step)``, with the bundle's ``lr`` and ``clip``."""
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
        return new, loss

    def _kl(self, old: np.ndarray, new: np.ndarray, data: Mapping[str, np.ndarray]) -> float:
        """Approximate KL(pre-update || new) on the adaptation data, ``E[(r - 1) - log r]``
        (``old_logp`` was recorded under the pre-update parameters: they acted).

        With a per-episode latent, the exact KL of the latent's distribution,
        ``|context' - context|^2 / (2 sigma^2)`` (what training records): the step moves
        the context alone (checked at load), so the actions given a latent do not change.
        """
        if self._context is not None:
            assert self._latent_std is not None
            shift = new[self._context].astype(np.float64) - old[self._context]
            return float((shift * shift).sum() / (2.0 * self._latent_std ** 2))
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
            self._trial.cancel("reset_adaptation()")
            self._params = self._last_good = self.bundle.params
            self._next_params = None
            self._recorder.reset()

    def save_params(self, path: str | Path) -> Path:
        """Save the parameters in use (``.npz``: ``params`` float32 [P] and ``meta`` JSON
        naming the bundle family, layout and meta-learned parameter hash). Atomic."""
        return write_params_file(path, self._params, self.bundle)

    def load_params(self, path: str | Path) -> None:
        """Use parameters saved by :meth:`save_params` (e.g. adapted earlier).

        Raises:
            BundleError: unreadable file, another format, family, layout or meta-learned
                parameters, a hash mismatch, or non-finite values.
            RuntimeError: called during an episode (call :meth:`end_episode` first).
        """
        params = read_params_file(path, self.bundle)
        with self._lock:
            if self._recorder.episode_open:
                raise RuntimeError("load_params() during an episode; call end_episode() first")
            self._next_params = None
            self._generation += 1
            self._trial.cancel("load_params()")
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
