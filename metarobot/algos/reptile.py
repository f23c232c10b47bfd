"""Reptile (Nichol et al. 2018): the outer update of one meta-iteration.

Each task's parameters take ``outer.epochs`` clipped PPO-style steps on the task's
pre-update data (first order, the inner objective with ``outer.clip``); theta then moves
the fraction ``outer.reptile_lr`` of the way to the tasks' mean.
"""

from __future__ import annotations

import torch

from metarobot.algos import maml
from metarobot.core.policy import GaussianMLPPolicy, Params
from metarobot.sampling.rollouts import AdaptationRollouts
from metarobot.training.config import OuterConfig


@torch.no_grad()
def reptile_update(params: Params, adapted_params: Params, outer_lr: float) -> Params:
    """``theta + outer_lr * mean_i(theta'_i - theta)``, a new parameter dict.

    Args:
        params: theta (unstacked).
        adapted_params: the tasks' adapted parameters, stacked ``[M, ...]``.
        outer_lr: the fraction ``epsilon`` in ``(0, 1]`` of the way to the tasks' mean.

    Returns:
        New leaf tensors, ``requires_grad`` as in ``params``.
    """
    if not 0.0 < outer_lr <= 1.0:
        raise ValueError(f"Reptile outer_lr must be in (0, 1], got {outer_lr}")
    return {k: (p + outer_lr * (adapted_params[k] - p).mean(0)).requires_grad_(p.requires_grad)
            for k, p in params.items()}


@torch.no_grad()
def update(model: GaussianMLPPolicy, params: Params, rollouts: AdaptationRollouts,
           rates: float | Params, outer: OuterConfig) -> dict[str, float]:
    """Move theta (``params``, in place) toward the tasks' adapted parameters.

    ``rates`` are the inner step's learning rates (:func:`metarobot.core.inner.step_sizes`).
    Returns no statistics (the iteration's returns are logged by the trainer).
    """
    task_params, _, _ = maml.adapt(model, params, rollouts.batches[:1], rollouts.advs[:1],
                                   rates, outer.epochs, "lvc", first_order=True,
                                   clip=outer.clip)
    new = reptile_update(params, task_params, outer.reptile_lr)
    for k, v in params.items():
        v.copy_(new[k])
    return {}
