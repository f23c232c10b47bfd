"""Advantages for on-device adaptation: numpy only (the device runtime never loads torch).

The same computation as :func:`metarobot.core.advantages.compute_advantages`, for one task:
a linear feature baseline ``[o, o^2, t, t^2, t^3, 1]`` (``o`` = raw obs clipped to
+-10, ``t`` = step index / 100) fit by ridge regression to the discounted returns on the
real steps (``reg`` from 1e-5, x10 per failed solve, 5 tries, else zero coefficients),
GAE with value 0 after an episode's last real step, then normalisation over the real
steps. Computed in float64 and returned in ``rew``'s dtype. A test holds it equal to the
torch version.

Shapes: ``obs [E, T, O]``, ``rew``, ``mask`` ``[E, T]``; mask is 1.0 on real steps.
"""

from __future__ import annotations

import numpy as np

#: The name bundles record for this baseline (``metadata["inner"]["baseline"]``).
BASELINE_NAME = "linear_feature"
FEATURE_OBS_CLIP = 10.0
TIME_SCALE = 100.0
BASELINE_REG, BASELINE_REG_GROWTH, BASELINE_REG_TRIES = 1e-5, 10.0, 5
NORM_EPS = 1e-8


def baseline_features(obs: np.ndarray) -> np.ndarray:
    """``[E, T, O] -> [E, T, 2O+4]``: ``[o, o^2, t, t^2, t^3, 1]`` per step."""
    o = np.clip(obs, -FEATURE_OBS_CLIP, FEATURE_OBS_CLIP)
    t = np.arange(obs.shape[-2], dtype=obs.dtype) / TIME_SCALE
    t = np.broadcast_to(t[:, None], (*obs.shape[:-1], 1))
    return np.concatenate([o, o * o, t, t * t, t * t * t, np.ones_like(t)], axis=-1)


def fit_linear_baseline(obs: np.ndarray, returns: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Ridge regression of ``returns [E, T]`` on the features of ``obs``: ``coeffs [F]``."""
    x = baseline_features(obs.astype(np.float64)).reshape(-1, 2 * obs.shape[-1] + 4)
    y = returns.astype(np.float64).reshape(-1)
    w = mask.astype(np.float64).reshape(-1)
    xtwx = x.T @ (w[:, None] * x)
    xtwy = x.T @ (w * y)
    reg = BASELINE_REG
    for _ in range(BASELINE_REG_TRIES):
        try:
            coeffs = np.linalg.solve(xtwx + reg * np.eye(x.shape[1]), xtwy)
        except np.linalg.LinAlgError:
            coeffs = None
        if coeffs is not None and np.isfinite(coeffs).all():
            return coeffs
        reg *= BASELINE_REG_GROWTH
    return np.zeros(x.shape[1])


def discounted_returns(rew: np.ndarray, mask: np.ndarray, gamma: float) -> np.ndarray:
    """``R_t = m_t * (r_t + gamma * R_{t+1})`` along the last (time) axis."""
    out = np.zeros_like(rew)
    running = np.zeros_like(rew[..., 0])
    for t in reversed(range(rew.shape[-1])):
        running = mask[..., t] * (rew[..., t] + gamma * running)
        out[..., t] = running
    return out


def gae(rew: np.ndarray, values: np.ndarray, mask: np.ndarray, gamma: float,
        lam: float) -> np.ndarray:
    """GAE along the last (time) axis; the value after an episode's last real step is 0."""
    out = np.zeros_like(rew)
    running = np.zeros_like(rew[..., 0])
    next_value = np.zeros_like(rew[..., 0])
    for t in reversed(range(rew.shape[-1])):
        m = mask[..., t]
        delta = rew[..., t] + gamma * next_value - values[..., t]
        running = m * (delta + gamma * lam * running)
        out[..., t] = running
        next_value = m * values[..., t]
    return out


def compute_advantages(obs: np.ndarray, rew: np.ndarray, mask: np.ndarray, gamma: float,
                       lam: float, normalize: bool = True) -> np.ndarray:
    """Advantages ``[E, T]`` of one task's episodes, 0 on padding, in ``rew``'s dtype.

    Args:
        obs: ``[E, T, O]`` raw observations.
        rew: ``[E, T]`` rewards (floating point).
        mask: ``[E, T]`` 1.0 on real steps, 0.0 on padding.
        gamma: discount in ``(0, 1]``; lam: GAE lambda in ``[0, 1]``.
        normalize: normalise over the real steps.
    """
    obs, rew, mask = np.asarray(obs), np.asarray(rew), np.asarray(mask)
    if obs.ndim != 3 or rew.ndim != 2 or obs.shape[:2] != rew.shape or mask.shape != rew.shape:
        raise ValueError(f"expected obs [E, T, O], rew and mask [E, T], got {obs.shape}, "
                         f"{rew.shape}, {mask.shape}")
    if not np.issubdtype(rew.dtype, np.floating):
        raise ValueError(f"rew must be floating point, got {rew.dtype}")
    if not (0.0 < gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"need 0 < gamma <= 1 and 0 <= lam <= 1, got {gamma}, {lam}")
    if not (np.isfinite(obs).all() and np.isfinite(rew).all()):
        raise ValueError("observations and rewards must be finite")
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError("mask must contain only 0.0 and 1.0")
    obs64, rew64, mask64 = obs.astype(np.float64), rew.astype(np.float64), mask.astype(np.float64)
    returns = discounted_returns(rew64, mask64, gamma)
    coeffs = fit_linear_baseline(obs64, returns, mask64)
    values = (baseline_features(obs64) @ coeffs) * mask64
    adv = gae(rew64, values, mask64, gamma, lam)
    if normalize:
        count = max(mask64.sum(), 1.0)
        mean = (adv * mask64).sum() / count
        std = np.sqrt((((adv - mean) ** 2) * mask64).sum() / count)
        adv = (adv - mean) / (std + NORM_EPS) * mask64
    return adv.astype(rew.dtype)
