"""The MAML inner-loop step: the one definition shared by the trainer and the ONNX export.

Every inner objective is here, in one table (:data:`INNER_LOSS_FUNCTIONS`, keyed by the
config's ``inner.loss``). The device's (and the default) one is the likelihood-ratio
surrogate of ProMP (its "LVC" objective)::

    ratio  = exp(log pi_theta(a|s) - old_logp)
    L(theta) = -sum_i w_i * min(ratio_i * A_i, clip(ratio_i, 1 - c, 1 + c) * A_i) / sum_i w_i

With ``old_logp`` the log-probability under the pre-update parameters (held constant),
``ratio`` is 1 at the pre-update parameters, so the first step's gradient equals the
vanilla policy gradient and its second derivative carries the correct curvature term.
``clip`` (``c``) defaults to infinity (no clipping) in the trainer; on later unrolled steps
a finite clip keeps adapted parameters from running away. ``w`` masks padding (0/1) or
weights transitions. The others, for the trainer only (the adapt graph is LVC):

* ``"vpg"``: ``-mean(log pi * A)`` (MAML's original surrogate, no sampling term);
* ``"dice"``: DiCE, ``-mean(exp(sum_{t'<=t} (log pi - old_logp)) * A_t)`` per trajectory;
  the stored ``old_logp`` plays the magic box's stop-gradient, so every derivative order
  is DiCE's at the sampling parameters;
* ``"dynamics"``: self-supervised, no rewards: the squared error of the policy's dynamics
  model predicting each transition's change of (normalised) observation from the
  observation, the action and the context (:func:`dynamics_loss`). Rewards are a noisy,
  indirect signal of a task's dynamics; the robot's own transitions are a direct one.
  Used with ``inner.adapt: context`` (CAVIA with a self-supervised inner objective).

Each returns ``(loss, approx_kl)`` with the one approximate-KL estimator :func:`approx_kl`.

One step is ``theta' = theta - lr * grad L(theta)``, with ``lr`` a scalar, or one learning
rate per parameter for Meta-SGD. Written with :func:`torch.func.grad`, so it can be
``vmap``-ed over tasks, differentiated through (second order), and traced to aten ops
by ``make_fx`` for the ONNX adapt graph.

Shapes: ``obs [N, O]``, ``act [N, A]``, ``adv``, ``old_logp``, ``weight`` ``[N]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Literal, NamedTuple, Protocol, get_args

import torch
from torch import Tensor
from torch.func import grad

from metarobot.core.policy import (
    GaussianMLPPolicy,
    ParamLayout,
    Params,
    dynamics_forward,
    latent_log_prob,
    log_prob,
    with_latent,
)

#: ``inner.loss``: the inner objectives of :data:`INNER_LOSS_FUNCTIONS`.
InnerLossName = Literal["lvc", "dice", "vpg", "dynamics"]
INNER_LOSSES: tuple[InnerLossName, ...] = get_args(InnerLossName)
#: ``inner.adapt``: which parameters the inner step changes (:func:`adapted_names`).
InnerAdaptName = Literal["all", "context"]
INNER_ADAPTS: tuple[InnerAdaptName, ...] = get_args(InnerAdaptName)


class InnerBatch(NamedTuple):
    """The data of one task's inner step (see module docstring for shapes)."""

    obs: Tensor
    act: Tensor
    adv: Tensor
    old_logp: Tensor
    weight: Tensor


def approx_kl(log_ratio: Tensor, weight: Tensor) -> Tensor:
    """Approximate ``KL(old || new)`` from samples of the old policy (nats, scalar):
    the non-negative estimator ``E_w[(r - 1) - log r]`` with ``log r = logp_new - logp_old``.

    Shapes: ``log_ratio``, ``weight`` ``[N]``. The device's numpy twin is
    :func:`deploy.safety.approx_kl`.
    """
    return (weight * ((torch.exp(log_ratio) - 1.0) - log_ratio)).sum() / weight.sum()


def inner_loss(model: GaussianMLPPolicy, params: Params, batch: InnerBatch,
               clip: Tensor | float) -> tuple[Tensor, Tensor]:
    """The clipped likelihood-ratio surrogate ("lvc") and the approximate KL(old || new).

    Returns ``(loss, approx_kl)``, both scalars (KL: :func:`approx_kl`).
    """
    logp = log_prob(model, params, batch.obs, batch.act)
    log_ratio = logp - batch.old_logp
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    surrogate = torch.minimum(ratio * batch.adv, clipped * batch.adv)
    loss = -(batch.weight * surrogate).sum() / batch.weight.sum()
    return loss, approx_kl(log_ratio, batch.weight)


def vpg_loss(model: GaussianMLPPolicy, params: Params, batch: InnerBatch,
             ) -> tuple[Tensor, Tensor]:
    """One task's ``-sum_i w_i log pi(a_i|s_i) A_i / sum_i w_i`` and approx KL (``[N]`` data)."""
    logp = log_prob(model, params, batch.obs, batch.act)
    loss = -(batch.weight * logp * batch.adv).sum() / batch.weight.sum()
    return loss, approx_kl(logp - batch.old_logp, batch.weight)


def dice_loss(model: GaussianMLPPolicy, params: Params, batch: InnerBatch, horizon: int,
              ) -> tuple[Tensor, Tensor]:
    """One task's DiCE loss and approx KL; ``batch`` is ``E`` episodes of ``horizon`` steps
    flattened (``N = E * horizon``). The magic box of step ``t`` is the product of the
    episode's likelihood ratios up to ``t`` (1 in value at the sampling parameters)."""
    logp = log_prob(model, params, batch.obs, batch.act)
    log_ratio = logp - batch.old_logp
    cum_log_ratio = (batch.weight * log_ratio).reshape(-1, horizon).cumsum(-1).reshape(-1)
    loss = -(batch.weight * torch.exp(cum_log_ratio) * batch.adv).sum() / batch.weight.sum()
    return loss, approx_kl(log_ratio, batch.weight)


def transition_weights(weight: Tensor, horizon: int) -> Tensor:
    """The weight ``[N]`` of each step's transition to the next step of its episode:
    ``w_t * w_{t+1}`` within an episode of the flattened ``[E * horizon]`` batch, 0 on
    each episode's last row (its successor is the next episode's first step) and wherever
    either step is padding (so the last real step of an episode has none)."""
    w = weight.reshape(-1, horizon)
    return torch.cat([w[:, :-1] * w[:, 1:], torch.zeros_like(w[:, :1])], -1).reshape(-1)


def dynamics_error(model: GaussianMLPPolicy, params: Params, obs: Tensor, act: Tensor,
                   transition_weight: Tensor) -> Tensor:
    """The dynamics model's prediction error over consecutive rows ``[N]`` (scalar):
    ``sum_i v_i * mean_o (f(s_i, a_i, c) - (s_{i+1} - s_i))_o^2 / sum_i v_i``.

    Row ``i``'s target is the change to row ``i + 1``, so ``transition_weight`` ``v [N]``
    must be 0 wherever row ``i + 1`` is not the next step of row ``i``'s episode (each
    episode's last row, padding): the trainer gets it from :func:`transition_weights`,
    the device runtime from its recorded episodes (``deploy.recorder.adaptation_data``).
    ``s`` are the policy's normalised observations, ``f``
    :func:`metarobot.core.policy.dynamics_forward`. This is the function the trainer's
    inner step and the bundle's adapt graph share.
    """
    norm = model.normalize(obs)
    target = torch.cat([norm[1:] - norm[:-1], torch.zeros_like(norm[:1])], 0)
    error = (dynamics_forward(model, params, obs, act) - target).pow(2).mean(-1)
    # Clamped: a batch of one-step episodes has no transition (loss 0, not 0/0).
    return (transition_weight * error).sum() / transition_weight.sum().clamp_min(1e-12)


def dynamics_loss(model: GaussianMLPPolicy, params: Params, batch: InnerBatch, horizon: int,
                  ) -> tuple[Tensor, Tensor]:
    """One task's dynamics-prediction loss (:func:`dynamics_error` over the transitions of
    :func:`transition_weights`) and the policy's approx KL (its context moves, as with the
    other losses); ``batch`` is ``E`` episodes of ``horizon`` steps flattened
    (``N = E * horizon``)."""
    return dynamics_loss_weighted(model, params, batch,
                                  transition_weights(batch.weight, horizon), batch.weight)


def dynamics_loss_weighted(model: GaussianMLPPolicy, params: Params, batch: InnerBatch,
                           transition_weight: Tensor, kl_weight: Tensor,
                           ) -> tuple[Tensor, Tensor]:
    """:func:`dynamics_error` with ``transition_weight`` ``[N]`` and the approx KL weighted
    by ``kl_weight`` ``[N]``: :func:`dynamics_loss` (weights from the episode mask) and
    the adapt graph (the transition weight given as ``batch.weight``) both call it."""
    loss = dynamics_error(model, params, batch.obs, batch.act, transition_weight)
    logp = log_prob(model, params, batch.obs, batch.act)
    return loss, approx_kl(logp - batch.old_logp, kl_weight)


class EpisodeLatents(NamedTuple):
    """One task's per-episode latents (``policy.context_noise``): ``value [E, C]``, their
    sampling log-density ``old_logp [E]``, advantage ``adv [E]`` (each episode's return
    standardised over the task's episodes) and ``episode [E, N]``, which rows of the
    task's :class:`InnerBatch` belong to which episode (1 on an episode's real steps,
    else 0). No grad; the trainer stacks them ``[M, ...]``."""

    value: Tensor
    old_logp: Tensor
    adv: Tensor
    episode: Tensor


def standardized_returns(returns: Tensor) -> Tensor:
    """Each episode's return standardised over the task's episodes (last dim): the
    latents' advantage. The device's numpy twin is in :mod:`deploy.recorder`."""
    return (returns - returns.mean(-1, keepdim=True)) / (
        returns.std(-1, keepdim=True, unbiased=False) + 1e-8)


def latent_loss(model: GaussianMLPPolicy, context: Tensor, latents: EpisodeLatents,
                clip: float | Tensor = math.inf, action_ratio: Tensor | None = None) -> Tensor:
    """One task's clipped likelihood-ratio surrogate over its episodes' latents (scalar):
    ``-mean_e min(r_e A_e, clip(r_e, 1 - c, 1 + c) A_e)``, ``r_e = N(z_e; context,
    sigma^2) / old density``. At the sampling context its gradient is ``-mean_e A_e
    (z_e - context) / sigma^2``: a step on it moves the context toward the latents of the
    episodes that paid.

    ``action_ratio`` ``[E]`` (the inner step's): each episode's mean likelihood ratio of
    its actions given its latent, 1 in value at the sampling parameters, multiplying
    ``A_e``. Its gradient, the episode's mean score, is the term through which the outer
    loop learns how theta's actions make the latents' returns differ, i.e. to explore
    (ProMP's per-step ratio, in the latent's form; DiCE's would be the product over the
    episode, whose variance grows with its length).
    """
    ratio = torch.exp(latent_log_prob(model, context, latents.value) - latents.old_logp)
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    adv = latents.adv if action_ratio is None else latents.adv * action_ratio
    return -torch.minimum(ratio * adv, clipped * adv).mean()


def latent_inner_loss(model: GaussianMLPPolicy, params: Params, batch: InnerBatch,
                      latents: EpisodeLatents, clip: Tensor | float,
                      action_loss: Callable[[Params], tuple[Tensor, Tensor]] | None = None,
                      ) -> tuple[Tensor, Tensor]:
    """The inner objective of a policy with per-episode latents: the actions' loss given
    each row's episode latent (the latents are data: it does not reach the context) plus
    :func:`latent_loss` with each episode's :func:`action ratio <latent_loss>`. Returns
    ``(loss, approx_kl of the actions given their latents)``.

    ``action_loss``: the actions' objective given the latents, ``params -> (loss, kl)``
    (default :func:`inner_loss` with ``clip``, the adapt graph's). The trainer's inner
    step and the bundle's latent adapt graph both call this function.
    """
    given = with_latent(params, latents.episode.transpose(0, 1) @ latents.value)
    loss, kl = (inner_loss(model, given, batch, clip) if action_loss is None
                else action_loss(given))
    ratio = torch.exp(log_prob(model, given, batch.obs, batch.act) - batch.old_logp)
    action_ratio = (latents.episode @ ratio) / latents.episode.sum(-1).clamp_min(1.0)
    return loss + latent_loss(model, params["context"], latents, clip, action_ratio), kl


class InnerLossFunction(Protocol):
    """One task's inner objective: ``(model, params, batch, clip, horizon) -> (loss,
    approx_kl)``. ``clip`` is the "lvc" ratio clip (inf: none); ``horizon`` the episode
    length of the flattened batch (DiCE's trajectories). Each uses what it needs."""

    def __call__(self, model: GaussianMLPPolicy, params: Params, batch: InnerBatch,
                 clip: Tensor | float, horizon: int) -> tuple[Tensor, Tensor]: ...


#: Every inner objective, by the config's ``inner.loss`` name (the one table).
INNER_LOSS_FUNCTIONS: dict[InnerLossName, InnerLossFunction] = {
    "lvc": lambda model, params, batch, clip, horizon: inner_loss(model, params, batch, clip),
    "dice": lambda model, params, batch, clip, horizon: dice_loss(model, params, batch,
                                                                 horizon),
    "vpg": lambda model, params, batch, clip, horizon: vpg_loss(model, params, batch),
    "dynamics": lambda model, params, batch, clip, horizon: dynamics_loss(model, params, batch,
                                                                         horizon),
}
assert set(INNER_LOSS_FUNCTIONS) == set(INNER_LOSSES)


#: The parameter an ``inner.adapt: context`` step changes (:class:`GaussianMLPPolicy`).
CONTEXT_NAME = "context"


def adapted_names(adapt: InnerAdaptName, params: Params) -> list[str]:
    """The parameters the inner step changes: all, or the policy's context alone."""
    if adapt == "all":
        return list(params)
    if CONTEXT_NAME not in params:
        raise ValueError("inner.adapt: context needs a policy with a context input "
                         "(policy.context_dim > 0)")
    return [CONTEXT_NAME]


def step_sizes(adapt: InnerAdaptName, lr: float, params: Params, meta_sgd_lr: Params | None,
               ) -> float | Params:
    """The learning rate(s) of the inner step, as :func:`inner_step` takes them.

    ``lr`` (the config's ``inner.lr``), or Meta-SGD's learned rates ``meta_sgd_lr`` (one
    tensor per adapted parameter). With ``adapt="context"`` every other parameter gets
    rate 0, so a bundle's per-parameter ``lr`` vector says what the device may change.
    """
    names = adapted_names(adapt, params)
    if len(names) == len(params):
        return meta_sgd_lr if meta_sgd_lr is not None else lr
    rates = meta_sgd_lr if meta_sgd_lr is not None else {
        k: torch.full_like(params[k], lr) for k in names}
    return {k: rates[k] if k in names else torch.zeros_like(v) for k, v in params.items()}


def inner_step(model: GaussianMLPPolicy, params: Params, batch: InnerBatch,
               lr: float | Tensor | Params, clip: float | Tensor = float("inf"),
               first_order: bool = False,
               loss_fn: Callable[[Params], tuple[Tensor, Tensor]] | None = None,
               ) -> tuple[Params, Tensor, Tensor]:
    """One inner gradient step. Returns ``(adapted params, loss, approx_kl)`` at ``params``.

    Args:
        lr: a scalar, or a dict of per-parameter learning rates (Meta-SGD).
        first_order: drop the second-order terms (FOMAML): the gradient is treated as a
            constant by any outer differentiation.
        loss_fn: another inner objective ``params -> (loss, approx_kl)`` (the trainer's
            other options); default :func:`inner_loss` on ``batch`` with ``clip``.
    """
    if loss_fn is None:
        loss_fn = partial(inner_loss, model, batch=batch, clip=clip)

    def loss_with_aux(p: Params) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        loss, kl = loss_fn(p)
        return loss, (loss, kl)

    grads, (loss, kl) = grad(loss_with_aux, has_aux=True)(params)
    if first_order:
        grads = {k: g.detach() for k, g in grads.items()}
    rates = lr if isinstance(lr, dict) else {k: lr for k in params}
    return {k: params[k] - rates[k] * grads[k] for k in params}, loss, kl


#: The inner losses a bundle's adapt graph can hold (:func:`inner_steps_flat`).
EXPORTABLE_INNER_LOSSES: tuple[InnerLossName, ...] = ("lvc", "dynamics")


def inner_steps_flat(model: GaussianMLPPolicy, layout: ParamLayout, flat: Tensor,
                     batch: InnerBatch, lr: Tensor, clip: Tensor, steps: int = 1,
                     loss: InnerLossName = "lvc", latents: EpisodeLatents | None = None,
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """``steps`` inner steps on flat parameters ``[P]``: the function the adapt graph exports.

    ``lr`` is a scalar tensor or a ``[P]`` vector (Meta-SGD). Every step uses the same
    batch and the same ``old_logp`` (the pre-update policy's), as the trainer does.
    ``loss``: ``"lvc"`` (:func:`inner_loss` with ``clip``), or ``"dynamics"``
    (:func:`dynamics_error`; then ``batch.weight`` is the transition weight, 0 on each
    episode's last row, ``adv`` and ``clip`` are unused, and the KL is weighted by it).
    With ``latents`` (a policy with per-episode latents; ``"lvc"`` only) the objective is
    :func:`latent_inner_loss`.
    Returns ``(new flat params [P], loss, approx_kl)`` where loss and KL are those of the
    last step, evaluated before it.
    """
    if loss not in EXPORTABLE_INNER_LOSSES:
        raise ValueError(f"an adapt graph holds one of {list(EXPORTABLE_INNER_LOSSES)}, "
                         f"not {loss!r}")
    if latents is not None and loss != "lvc":
        raise ValueError(f"per-episode latents take the 'lvc' inner loss, not {loss!r}")
    rates: float | Tensor | Params = lr if lr.dim() == 0 else layout.unflatten(lr)

    def dynamics(p: Params) -> tuple[Tensor, Tensor]:
        return dynamics_loss_weighted(model, p, batch, batch.weight, batch.weight)

    def with_latents(p: Params) -> tuple[Tensor, Tensor]:
        assert latents is not None
        return latent_inner_loss(model, p, batch, latents, clip)

    loss_fn = (dynamics if loss == "dynamics" else with_latents if latents is not None
               else None)
    params = layout.unflatten(flat)
    value = kl = flat.new_zeros(())
    for _ in range(steps):
        params, value, kl = inner_step(model, params, batch, rates, clip, loss_fn=loss_fn)
    return layout.flatten(params), value, kl
