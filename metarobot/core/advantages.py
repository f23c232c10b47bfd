"""Advantages for the inner and outer PPO-MAML steps: linear feature baseline + GAE.

The baseline is garage's / ProMP's ``LinearFeatureBaseline``, refit per task on the very
data it is used on (M tasks at once, each on its own E episodes). Per real step::

    o = clip(obs, -10, 10)          raw (unnormalised) observation
    t = step_index / 100            step index within the episode, 0-based
    features = [o, o^2, t, t^2, t^3, 1]          (F = 2 * O + 4)

The coefficients solve ``(X^T W X + reg * I) w = X^T W y`` in float64 with ``y`` the
discounted returns and ``W`` the mask (padding excluded). ``reg`` starts at 1e-5 and grows
10x, up to 5 tries, while the solve fails or is not finite; a task that never solves gets
zero coefficients (baseline 0). :mod:`deploy.advantages` is the same computation in numpy
for one task; a test holds the two equal.

Episodes end at their last real step: the value after it is 0 (no bootstrap). Advantages
are normalised per task over the task's real steps: ``(A - mean) / (std + 1e-8)``.

Shapes: ``obs [M, E, T, O]``, ``rew``, ``mask`` ``[M, E, T]``; mask is 1.0 on real steps.
Everything here is computed without gradient (advantages are constants to the losses).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Raw observations are clipped to this range before building features (as garage does).
FEATURE_OBS_CLIP = 10.0
#: The time feature is ``step_index / TIME_SCALE``.
TIME_SCALE = 100.0
#: First ridge coefficient, its growth factor per failed solve, and the number of tries.
BASELINE_REG, BASELINE_REG_GROWTH, BASELINE_REG_TRIES = 1e-5, 10.0, 5
#: Added to the standard deviation when normalising advantages.
NORM_EPS = 1e-8
#: Below this variance of the returns, explained variance is undefined and reported as 0.
EV_MIN_VAR = 1e-12


def baseline_features(obs: Tensor) -> Tensor:
    """Features ``[o, o^2, t, t^2, t^3, 1]`` of every step: ``[..., T, O] -> [..., T, 2O+4]``."""
    o = obs.clamp(-FEATURE_OBS_CLIP, FEATURE_OBS_CLIP)
    steps = obs.shape[-2]
    t = (torch.arange(steps, dtype=obs.dtype, device=obs.device) / TIME_SCALE).unsqueeze(-1)
    t = t.expand(*obs.shape[:-1], 1)
    return torch.cat([o, o * o, t, t * t, t * t * t, torch.ones_like(t)], dim=-1)


def fit_linear_baseline(obs: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """Per-task ridge regression of ``returns`` on the features. Returns ``coeffs [M, F]``.

    ``obs [M, E, T, O]``, ``returns`` and ``mask`` ``[M, E, T]``. Computed in float64;
    never non-finite (see the module docstring for the regularisation schedule).
    """
    x = baseline_features(obs.double()).flatten(1, 2)  # [M, N, F]
    y = returns.double().flatten(1)  # [M, N]
    w = mask.double().flatten(1)
    xtwx = torch.einsum("mnf,mn,mng->mfg", x, w, x)
    xtwy = torch.einsum("mnf,mn,mn->mf", x, w, y).unsqueeze(-1)
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    coeffs = torch.zeros_like(xtwy)
    solved = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    reg = BASELINE_REG
    for _ in range(BASELINE_REG_TRIES):
        sol, info = torch.linalg.solve_ex(xtwx + reg * eye, xtwy)
        # Each task keeps the first regularisation at which its own solve succeeded.
        ok = (info == 0) & torch.isfinite(sol).all(dim=(-2, -1)) & ~solved
        coeffs = torch.where(ok[:, None, None], sol, coeffs)
        solved = solved | ok
        if bool(solved.all()):
            break
        reg *= BASELINE_REG_GROWTH
    return coeffs.squeeze(-1)


def predict_linear_baseline(coeffs: Tensor, obs: Tensor, mask: Tensor) -> Tensor:
    """Baseline values ``[M, E, T]`` (float64) from ``coeffs [M, F]``; 0 on padding."""
    values = torch.einsum("metf,mf->met", baseline_features(obs.double()), coeffs.double())
    return values * mask.double()


def discounted_returns(rew: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """``R_t = m_t * (r_t + gamma * R_{t+1})`` along the last (time) dim; shape of ``rew``."""
    out = torch.zeros_like(rew)
    running = torch.zeros_like(rew[..., 0])
    for t in reversed(range(rew.shape[-1])):
        running = mask[..., t] * (rew[..., t] + gamma * running)
        out[..., t] = running
    return out


def gae(rew: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimation along the last (time) dim; shape of ``rew``.

    ``delta_t = r_t + gamma * m_{t+1} V_{t+1} - V_t`` and
    ``A_t = m_t * (delta_t + gamma * lam * A_{t+1})``: the value after an episode's last
    real step is 0. With ``lam = 1`` this is ``discounted_returns - values``.
    """
    out = torch.zeros_like(rew)
    running = torch.zeros_like(rew[..., 0])
    next_value = torch.zeros_like(rew[..., 0])
    for t in reversed(range(rew.shape[-1])):
        m = mask[..., t]
        delta = rew[..., t] + gamma * next_value - values[..., t]
        running = m * (delta + gamma * lam * running)
        out[..., t] = running
        next_value = m * values[..., t]
    return out


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over the (E, T) dims of ``[M, E, T]`` on real steps, ``[M]``."""
    return (x * mask).sum(dim=(1, 2)) / mask.sum(dim=(1, 2)).clamp_min(1.0)


def explained_variance(returns: Tensor, values: Tensor, mask: Tensor) -> Tensor:
    """Per-task ``1 - Var(returns - values) / Var(returns)`` over real steps, ``[M]``.

    0 where the returns have (near) zero variance, where it is undefined.
    """
    def var(x: Tensor) -> Tensor:
        return _masked_mean((x - _masked_mean(x, mask)[:, None, None]) ** 2, mask)

    var_y = var(returns)
    ev = 1.0 - var(returns - values) / var_y.clamp_min(EV_MIN_VAR)
    return torch.where(var_y > EV_MIN_VAR, ev, torch.zeros_like(ev))


def normalize_per_task(adv: Tensor, mask: Tensor) -> Tensor:
    """``(A - mean) / (std + 1e-8)`` per task over real steps; 0 on padding. ``[M, E, T]``."""
    mean = _masked_mean(adv, mask)[:, None, None]
    std = torch.sqrt(_masked_mean((adv - mean) ** 2, mask))[:, None, None]
    return (adv - mean) / (std + NORM_EPS) * mask


@torch.no_grad()
def compute_advantages(batch_obs: Tensor, rew: Tensor, mask: Tensor, gamma: float = 0.99,
                       lam: float = 1.0, normalize: bool = True) -> tuple[Tensor, Tensor]:
    """Refit the baseline per task and return ``(adv [M, E, T], explained_variance [M])``.

    Args:
        batch_obs: ``[M, E, T, O]`` raw observations.
        rew: ``[M, E, T]`` rewards.
        mask: ``[M, E, T]`` 1.0 on real steps, 0.0 on padding (any other value is an error).
        gamma: discount in ``(0, 1]``.
        lam: GAE lambda in ``[0, 1]``; 1.0 gives returns minus baseline.
        normalize: normalise per task over its real steps.

    Returns:
        Advantages in ``rew``'s dtype, 0 on padding; the baseline's explained variance of
        the discounted returns per task (computed in float64, returned in ``rew``'s dtype).
    """
    if batch_obs.dim() != 4 or rew.dim() != 3:
        raise ValueError(f"expected obs [M, E, T, O] and rew [M, E, T], got "
                         f"{tuple(batch_obs.shape)} and {tuple(rew.shape)}")
    if batch_obs.shape[:3] != rew.shape or mask.shape != rew.shape:
        raise ValueError(f"obs {tuple(batch_obs.shape)}, rew {tuple(rew.shape)} and mask "
                         f"{tuple(mask.shape)} disagree on [M, E, T]")
    if not rew.is_floating_point():
        raise ValueError(f"rew must be floating point, got {rew.dtype}")
    if not (0.0 < gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"need 0 < gamma <= 1 and 0 <= lam <= 1, got {gamma}, {lam}")
    if not (torch.isfinite(batch_obs).all() and torch.isfinite(rew).all()):
        raise ValueError("observations and rewards must be finite")
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError("mask must contain only 0.0 and 1.0")
    obs64, rew64, mask64 = batch_obs.double(), rew.double(), mask.double()
    returns = discounted_returns(rew64, mask64, gamma)
    values = predict_linear_baseline(fit_linear_baseline(obs64, returns, mask64), obs64, mask64)
    adv = gae(rew64, values, mask64, gamma, lam)
    if normalize:
        adv = normalize_per_task(adv, mask64)
    return adv.to(rew.dtype), explained_variance(returns, values, mask64).to(rew.dtype)
