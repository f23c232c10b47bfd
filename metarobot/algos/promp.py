"""PPO-MAML (ProMP, Rothfuss et al. 2019): the outer update of one meta-iteration.

``outer.epochs`` Adam steps on the same data (no resampling), each on
:func:`metarobot.algos.maml.meta_loss`, the objective the finite-difference tests check:
PPO-clip of the adapted policies on the post-update data plus ``eta`` times the KL of the
pre-update policy from its sampling version (and, with ``inner.loss: dynamics``,
``inner.dynamics_coef`` times the dynamics model's loss). Then ProMP's adaptive ``eta``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from metarobot.algos import maml
from metarobot.core.policy import GaussianMLPPolicy, Params
from metarobot.sampling.rollouts import AdaptationRollouts
from metarobot.training.config import InnerConfig, OuterConfig


def update(model: GaussianMLPPolicy, params: Params, old_params: Params,
           rollouts: AdaptationRollouts, post_adv: Tensor, rates: float | Params,
           inner: InnerConfig, outer: OuterConfig, eta: float,
           apply_step: Callable[[Tensor], bool]) -> tuple[dict[str, float], float]:
    """Update theta (``params``, in place through ``apply_step``) on one meta-batch.

    Args:
        params: theta, the leaves the optimizer steps; ``old_params`` is theta at sampling.
        rollouts: the pre-update batches, their advantages, the post-update batch and the
            adapted parameters (with the graph back to ``params``) from sampling.
        post_adv: the post-update advantages ``[M, E, T]`` (the value network's, or the
            linear baseline's).
        rates: the inner step's learning rates (:func:`metarobot.core.inner.step_sizes`).
        eta: the KL coefficient of this iteration.
        apply_step: backward and optimizer step on a loss; False when the step was skipped
            (a non-finite loss or gradient), which ends the update.

    Returns:
        ``(stats of the last epoch, eta for the next iteration)``.
    """
    pre, pre_advs = rollouts.batches[:-1], rollouts.advs[:-1]
    stats: dict[str, float] = {}
    for epoch in range(outer.epochs):
        # Epoch 0: theta has not moved since sampling, so the adaptation computed then (and
        # its graph) is reused; later epochs adapt again from the updated theta.
        loss, stats = maml.meta_loss(
            model, params, old_params, pre, pre_advs, rollouts.batches[-1], post_adv, rates,
            num_steps=inner.steps, eta=eta, inner_loss=inner.loss,
            first_order=inner.first_order, inner_clip=inner.loss_clip, outer_clip=outer.clip,
            adapted=rollouts.adapted if epoch == 0 else None,
            dynamics_coef=inner.dynamics_coef)
        if not apply_step(loss):
            break
    if outer.adaptive_eta and "kl_penalty" in stats:
        eta = maml.update_eta(eta, stats["kl_penalty"], outer.kl_target)
    return stats, eta
