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
and the control thread then waits for the GIL (measured: 250 ms stalls). Set
``OPENBLAS_NUM_THREADS=1`` in the control process: the advantage fit's small solves gain
nothing from BLAS threads, and spinning BLAS threads steal the control thread's core.
"""

from __future__ import annotations

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
    ADAPT_INPUTS,
    ADAPT_OUTPUTS,
    POLICY_OUTPUTS,
    Bundle,
    BundleError,
    Layout,
    load_bundle,
    open_session,
    params_sha256,
    session_metadata,
)

PARAMS_FORMAT = "metarobot.params"
PARAMS_FORMAT_VERSION = 1
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class SafetyConfig:
    """Rules an adaptation must pass before its parameters are used.

    Attributes:
        max_update_norm: largest L2 norm of ``new_params - params``; a larger update is
            scaled down to this norm (not rejected).
        max_kl: largest approximate KL(pre-update || post-update) on the adaptation data
            (nats, estimator ``E[(r - 1) - log r]``); above it the update is rejected.
        min_episodes: fewest completed episodes an adaptation needs.
    """

    max_update_norm: float = 10.0
    max_kl: float = 1.0
    min_episodes: int = 1

    def __post_init__(self) -> None:
        if not self.max_update_norm > 0:
            raise ValueError(f"max_update_norm must be > 0, got {self.max_update_norm}")
        if not self.max_kl > 0:
            raise ValueError(f"max_kl must be > 0, got {self.max_kl}")
        if self.min_episodes < 1:
            raise ValueError(f"min_episodes must be >= 1, got {self.min_episodes}")


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
        update_scale: factor applied to the update (1.0 unless the norm was clipped).
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
    seconds: float = 0.0


@dataclass
class _Episode:
    obs: list[np.ndarray] = field(default_factory=list)
    act: list[np.ndarray] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    rew: list[float] = field(default_factory=list)


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
        self._executor: ThreadPoolExecutor | None = None
        self.rollbacks = 0
        self.last_report: AdaptReport | None = None

    @classmethod
    def load(cls, bundle_dir: str | Path, *, family: str | None = None,
             safety: SafetyConfig | None = None, seed: int | None = None, threads: int = 1,
             max_episodes: int = 1000) -> AdaptivePolicy:
        """Load and validate a bundle (see :func:`deploy.bundle.load_bundle`).

        Args:
            bundle_dir: the bundle directory.
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
        sessions = {b.policy_file: self._policy,
                    **{b.adapt_files[k]: s for k, s in self._adapt.items()}}
        for path, session in sessions.items():
            if session_metadata(session, path) != b.metadata:
                raise BundleError(f"{path}: embedded metadata differs from the manifest")
        inputs = [i.name for i in self._policy.get_inputs()]
        overridable = [i.name for i in self._policy.get_overridable_initializers()]
        outputs = [o.name for o in self._policy.get_outputs()]
        if inputs != ["obs"] or "params" not in overridable or outputs != list(POLICY_OUTPUTS):
            raise BundleError(f"{b.policy_file}: unexpected signature {inputs} "
                              f"(+{overridable}) -> {outputs}")
        for steps, session in self._adapt.items():
            names = [i.name for i in session.get_inputs()]
            lr_shape = session.get_inputs()[ADAPT_INPUTS.index("lr")].shape
            if (names != list(ADAPT_INPUTS)
                    or [o.name for o in session.get_outputs()] != list(ADAPT_OUTPUTS)
                    or list(lr_shape) != list(b.lr.shape)):
                raise BundleError(f"{b.adapt_files[steps]}: unexpected signature {names} "
                                  f"(lr shape {lr_shape}, bundle lr shape {list(b.lr.shape)})")
        # The policy's default params initializer must be the bundle's meta-learned params.
        probe = np.linspace(-1.0, 1.0, b.obs_dim, dtype=np.float32)[None]
        default = self._policy.run(None, {"obs": probe})
        explicit = self._policy.run(None, {"obs": probe, "params": b.params})
        if not all(np.array_equal(x, y) for x, y in zip(default, explicit)):
            raise BundleError(f"{b.policy_file}: its default parameters differ from "
                              f"{b.metadata['params']['file']}")

    # ------------------------------------------------------------------ acting
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
        if not isinstance(obs, np.ndarray):
            obs = np.asarray(obs)
        if not np.issubdtype(obs.dtype, np.floating):
            raise ValueError(f"observation dtype must be floating point (float32/float64), "
                             f"got {obs.dtype}")
        if obs.shape != (self._obs_dim,):
            raise ValueError(f"observation must have shape ({self._obs_dim},), got {obs.shape}")
        if not np.isfinite(obs).all():
            raise ValueError(f"observation contains NaN or inf at indices "
                             f"{np.flatnonzero(~np.isfinite(obs)).tolist()}")
        return obs

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
                or a non-finite reward.
        """
        if self._pending is None:
            raise ValueError("observe() must follow act() for the same observation")
        seen_obs, raw, returned, logp = self._pending
        if not np.array_equal(np.asarray(obs, dtype=np.float32), seen_obs):
            raise ValueError("observe(): obs is not the observation passed to the last act()")
        if not np.array_equal(np.asarray(action, dtype=np.float32), returned):
            raise ValueError("observe(): action is not the action returned by the last act()")
        reward = float(reward)
        if not math.isfinite(reward):
            raise ValueError(f"observe(): reward must be finite, got {reward}")
        self._pending = None
        episode = self._current
        episode.obs.append(seen_obs)
        episode.act.append(raw)
        episode.logp.append(logp)
        episode.rew.append(reward)
        if terminated or truncated:
            self.end_episode()

    def end_episode(self) -> None:
        """Close the current episode (kept for adaptation if it has transitions) and swap
        in an accepted update if one is waiting."""
        with self._lock:
            if self._current.rew:
                self._episodes.append(self._current)
            self._current = _Episode()
            self._pending = None
            self._episode_open = False
            if self._next_params is not None:
                self._swap_locked(self._next_params)

    def _swap_locked(self, params: np.ndarray) -> None:
        self._last_good, self._params = self._params, params
        self._next_params = None
        self._version += 1
        self._episodes.clear()  # collected by the previous parameters

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
        scale = min(1.0, self.safety.max_update_norm / norm) if norm > 0 else 1.0
        if scale < 1.0:
            new = (params + scale * delta).astype(np.float32)
        kl = self._kl(new, data)
        values = {**counts, "kl": kl, "update_norm": norm, "update_scale": scale}
        if not math.isfinite(kl) or kl > self.safety.max_kl:
            return self._reject(f"KL {kl:.4g} exceeds max_kl {self.safety.max_kl:.4g}; keeping "
                                "the last good parameters", steps, start, **values)
        new.setflags(write=False)
        with self._lock:
            if self._generation != generation or self._version != version:
                return self._reject("the parameters changed while adapting (reset or load); "
                                    "result discarded", steps, start, **values)
            self._next_params = new
            applied = not self._episode_open
            if applied:
                self._swap_locked(new)
        reason = "ok" if scale == 1.0 else "ok (update scaled to max_update_norm)"
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
        adv = compute_advantages(obs, rew, mask, float(inner["gamma"]), float(inner["lam"]),
                                 normalize=bool(inner.get("normalize", True)))
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

    def _kl(self, new: np.ndarray, data: Mapping[str, np.ndarray]) -> float:
        """Approximate KL(pre-update || new) on the adaptation data, ``E[(r - 1) - log r]``
        (``old_logp`` was recorded under the pre-update parameters: they acted)."""
        mean, log_std = self._policy.run(None, {"obs": data["obs"], "params": new})
        log_ratio = gaussian_log_prob(mean, log_std, data["act"]) - data["old_logp"]
        return float(np.mean(np.expm1(log_ratio) - log_ratio))

    # ------------------------------------------------------------------ parameters
    def reset_adaptation(self) -> None:
        """Back to the meta-learned parameters; clears all recorded data, the current
        episode and any waiting update (a running adaptation's result is discarded)."""
        with self._lock:
            self._generation += 1
            self._version += 1
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
                "base_params_sha256": self.bundle.metadata["params"]["sha256"],
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
        if meta.get("base_params_sha256") != b.metadata["params"]["sha256"]:
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
