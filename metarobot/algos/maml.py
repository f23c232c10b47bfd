"""The PPO-MAML (ProMP) meta-objective, computed for all M tasks at once with ``vmap``.

How one meta-iteration uses this module (the loop of the trainer and
:func:`metarobot.algos.promp.update`)::

    # theta = params (dict of leaf tensors), old_params = theta detached at sampling time.
    for k in range(K):                                  # ProMP: fresh data per inner step
        adapted_k, _, _ = adapt(model, params, pre[:k], advs[:k], lr, num_steps=k)  # k>0
        pre[k] = sample(M tasks, adapted_k); advs[k] = compute_advantages(...)[0]
    adapted_K, _, _ = adapt(model, params, pre, advs, lr, num_steps=K)
    post = sample(M tasks, adapted_K); post_adv = compute_advantages(...)[0]
    for epoch in range(outer.epochs):                   # Adam steps on the same data
        loss, stats = meta_loss(model, params, old_params, pre, advs, post, post_adv,
                                lr, num_steps=K, eta=eta)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
    eta = update_eta(eta, stats["kl_penalty"], kl_target)

Reptile (:mod:`metarobot.algos.reptile`) uses :func:`adapt` alone: K clipped PPO-style
steps on one batch, first order.

Inner steps (``adapt``) are :func:`metarobot.core.inner.inner_step` (what the device runs),
``theta' = theta - lr * grad L(theta)``, with ``L`` one of the inner objectives of
:data:`metarobot.core.inner.INNER_LOSS_FUNCTIONS` (``"lvc"``, ``"vpg"``, ``"dice"``,
``"dynamics"``; defined and explained in :mod:`metarobot.core.inner`). With ``"dynamics"``
the outer loss also has ``dynamics_coef`` times the dynamics model's loss on the
post-update data at the adapted context (:func:`task_dynamics_losses`): the model's direct
training signal, besides the second-order path through the inner step.

Parameters across tasks are "stacked": each tensor has a leading task dim ``M``.
Shapes follow :class:`metarobot.core.batch.EpisodeBatch` (``[M, E, T, ...]``); ``adv`` tensors
are ``[M, E, T]`` from :func:`metarobot.core.advantages.compute_advantages`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor
from torch.func import vmap

from metarobot.core import inner
from metarobot.core.batch import EpisodeBatch
from metarobot.core.inner import (
    INNER_LOSS_FUNCTIONS,
    INNER_LOSSES,
    EpisodeLatents,
    InnerBatch,
    InnerLossName,
    latent_loss,
)
from metarobot.core.policy import (
    GaussianMLPPolicy,
    Params,
    gaussian_entropy,
    latent_kl,
    log_prob,
    policy_forward,
    with_latent,
)


def episode_latents(batch: EpisodeBatch) -> EpisodeLatents | None:
    """The batch's latents stacked ``[M, ...]`` (:class:`~metarobot.core.inner.
    EpisodeLatents`, rows those of :func:`batch_to_inner`), or None for a batch without
    latents."""
    if batch.latent is None or batch.latent_logp is None:
        return None
    num_eps, horizon = batch.mask.shape[1:]
    # [M, E, E*T]: episode e's rows are e*T .. (e+1)*T - 1, where real.
    episode = torch.eye(num_eps, dtype=batch.mask.dtype, device=batch.mask.device)
    episode = episode.repeat_interleave(horizon, 1) * batch.mask.flatten(1)[:, None]
    return EpisodeLatents(batch.latent, batch.latent_logp,
                          inner.standardized_returns(batch.episode_returns), episode)


def latent_inputs(batch: EpisodeBatch) -> Tensor | None:
    """Each step's latent input, its episode's latent, ``[M, E, T, C]`` (the layout of
    ``batch.obs``; ``flatten(1, 2)`` gives the rows of :func:`batch_to_inner`), or None
    for a batch without latents."""
    if batch.latent is None:
        return None
    return batch.latent[:, :, None].expand(*batch.obs.shape[:-1], batch.latent.shape[-1])


def batch_to_inner(batch: EpisodeBatch, adv: Tensor) -> InnerBatch:
    """Flatten episodes per task: ``obs [M, E*T, O]``, ``act [M, E*T, A]``, the rest
    ``[M, E*T]``; ``old_logp`` is the sampling log-prob and ``weight`` the mask."""
    if adv.shape != batch.rew.shape:
        raise ValueError(f"adv {tuple(adv.shape)} must have the batch's [M, E, T] shape "
                         f"{tuple(batch.rew.shape)}")
    return InnerBatch(obs=batch.obs.flatten(1, 2), act=batch.act.flatten(1, 2),
                      adv=adv.flatten(1), old_logp=batch.logp.flatten(1),
                      weight=batch.mask.flatten(1))


def adapt(model: GaussianMLPPolicy, params: Params, pre_batches: Sequence[EpisodeBatch],
          pre_advs: Sequence[Tensor], inner_lr: float | Tensor | Params, num_steps: int,
          inner_loss: InnerLossName = "lvc", first_order: bool = False,
          clip: float = math.inf, stacked: bool = False) -> tuple[Params, Tensor, Tensor]:
    """``num_steps`` inner steps for all M tasks at once (``vmap`` over tasks).

    Args:
        params: shared pre-update parameters theta (unstacked).
        pre_batches, pre_advs: step ``k`` uses ``pre_batches[k]`` with advantages
            ``pre_advs[k]`` (``[M, E, T]``); in ProMP step ``k``'s data was sampled with the
            k-times adapted policy. A single batch is reused for every step (as the device
            does), otherwise there must be exactly ``num_steps``.
        inner_lr: scalar, or a dict of per-parameter learning rates (Meta-SGD).
        num_steps: K >= 1.
        inner_loss: "lvc", "vpg", "dice" or "dynamics" (see module docstring).
        first_order: FOMAML, the inner gradients are constants to outer differentiation.
        clip: likelihood-ratio clip of the "lvc" surrogate (inf = none).
        stacked: ``params`` are already one set per task, ``[M, ...]`` (ES-MAML's
            perturbed thetas), instead of one theta shared by all tasks.

    Returns:
        ``(adapted params stacked [M, ...], inner losses [K, M], inner approx KLs [K, M])``;
        step k's loss and KL are evaluated at the parameters before step k. Adapted params
        are differentiable functions of ``params`` (and of a tensor ``inner_lr``).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if len(pre_batches) != len(pre_advs) or len(pre_batches) not in (1, num_steps):
        raise ValueError(f"need 1 or num_steps={num_steps} pre-update batches with one "
                         f"advantage tensor each, got {len(pre_batches)} and {len(pre_advs)}")
    if inner_loss not in INNER_LOSSES:
        raise ValueError(f"inner_loss must be one of {INNER_LOSSES}, got {inner_loss!r}")
    if inner_loss != "lvc" and not math.isinf(clip):
        raise ValueError(f"clip applies to the 'lvc' inner loss only, got clip={clip} "
                         f"with {inner_loss!r}")
    if isinstance(inner_lr, dict) and set(inner_lr) != set(params):
        raise ValueError(f"Meta-SGD inner_lr keys {sorted(inner_lr)} must match the "
                         f"parameters {sorted(params)}")

    loss_function = INNER_LOSS_FUNCTIONS[inner_loss]

    def task_step(p: Params, batch: InnerBatch, horizon: int, latents: EpisodeLatents | None,
                  ) -> tuple[Params, Tensor, Tensor]:
        action_loss = partial(loss_function, model, batch=batch, clip=clip, horizon=horizon)
        loss_fn = action_loss if latents is None else partial(
            inner.latent_inner_loss, model, batch=batch, latents=latents, clip=clip,
            action_loss=action_loss)
        return inner.inner_step(model, p, batch, inner_lr, first_order=first_order,
                                loss_fn=loss_fn)

    num_tasks = pre_batches[0].obs.shape[0]
    task_params = params if stacked else {k: v.expand(num_tasks, *v.shape)
                                          for k, v in params.items()}
    losses, kls = [], []
    for k in range(num_steps):
        j = k if len(pre_batches) > 1 else 0
        batch = batch_to_inner(pre_batches[j], pre_advs[j])
        horizon = pre_batches[j].obs.shape[2]
        latents = episode_latents(pre_batches[j])
        if latents is not None and inner_loss == "dynamics":
            raise ValueError("the 'dynamics' inner loss takes no per-episode latents")
        latent_dim = None if latents is None else 0
        task_params, loss, kl = vmap(task_step, in_dims=(0, 0, None, latent_dim))(
            task_params, batch, horizon, latents)
        losses.append(loss)
        kls.append(kl)
    return task_params, torch.stack(losses), torch.stack(kls)


def outer_loss(model: GaussianMLPPolicy, adapted_params: Params, post_batch: EpisodeBatch,
               post_adv: Tensor, clip: float = 0.3) -> tuple[Tensor, dict[str, float]]:
    """PPO-clip loss of the adapted policies on post-update data, averaged over tasks.

    ``ratio = exp(log pi_{theta'_i}(a|s) - logp_sampled)`` per task ``i``; the loss is
    :func:`metarobot.core.inner.inner_loss` with ``clip``. ``adapted_params`` are stacked
    ``[M, ...]`` and carry the graph back to theta through the inner steps.

    With latents in ``post_batch``, the actions' loss is taken given each episode's
    latent and :func:`latent_loss` (same ``clip``) is added.

    Returns:
        ``(scalar loss, stats)`` with stats ``outer_loss``, ``outer_kl`` (approx KL between
        the sampling and adapted policies), ``clip_frac`` (fraction of real steps with
        ``|ratio - 1| > clip``) and ``entropy`` (mean over tasks, nats); with latents
        also ``latent_loss``.
    """
    post = batch_to_inner(post_batch, post_adv)
    latents, rows = episode_latents(post_batch), latent_inputs(post_batch)
    # Each row's policy parameters: the adapted ones, with the episode's latent as context.
    row_params = with_latent(adapted_params, None if rows is None else rows.flatten(1, 2))
    losses, kls = vmap(lambda p, b: inner.inner_loss(model, p, b, clip))(row_params, post)
    stats: dict[str, float] = {}
    if latents is not None:
        latent_losses = vmap(lambda c, z: latent_loss(model, c, z, clip))(
            adapted_params["context"], latents)
        losses = losses + latent_losses
        stats["latent_loss"] = latent_losses.mean().item()
    with torch.no_grad():
        logp = vmap(lambda p, b: log_prob(model, p, b.obs, b.act))(row_params, post)
        clipped = (torch.exp(logp - post.old_logp) - 1.0).abs() > clip
        clip_frac = (post.weight * clipped).sum() / post.weight.sum()
        log_std = vmap(lambda p, b: policy_forward(model, p, b.obs[:1])[1])(adapted_params,
                                                                           post)
        entropy = gaussian_entropy(log_std).mean()
    loss = losses.mean()
    stats.update(outer_loss=loss.item(), outer_kl=kls.mean().item(),
                 clip_frac=clip_frac.item(), entropy=entropy.item())
    return loss, stats


def task_dynamics_losses(model: GaussianMLPPolicy, task_params: Params,
                         batch: EpisodeBatch) -> Tensor:
    """The dynamics loss (:func:`metarobot.core.inner.dynamics_loss`) of each task ``[M]``
    on ``batch``, with parameters stacked ``[M, ...]`` (differentiable)."""
    data = batch_to_inner(batch, torch.zeros_like(batch.rew))  # it reads no advantages
    horizon = batch.obs.shape[2]
    losses, _ = vmap(lambda p, b: inner.dynamics_loss(model, p, b, horizon))(task_params, data)
    return losses


def gaussian_kl(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    """Closed-form ``KL(p || q)`` of diagonal Gaussians, summed over the last dim."""
    var_p, var_q = torch.exp(2.0 * log_std_p), torch.exp(2.0 * log_std_q)
    return (log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2.0 * var_q)
            - 0.5).sum(-1)


def kl_penalty(model: GaussianMLPPolicy, params: Params, old_params: Params,
               pre_batch: EpisodeBatch) -> Tensor:
    """Mean ``KL(pi_old || pi_theta)`` of the pre-update policy over ``pre_batch``'s real
    steps (scalar). ``old_params`` (theta at sampling time) are treated as constants.
    With latents: the actions' KL given each episode's latent, plus the latent
    distribution's ``KL(N(old context) || N(context))``."""
    rows = latent_inputs(pre_batch)
    mean, log_std = policy_forward(model, with_latent(params, rows), pre_batch.obs)
    with torch.no_grad():
        old = {k: v.detach() for k, v in old_params.items()}
        old_mean, old_log_std = policy_forward(model, with_latent(old, rows), pre_batch.obs)
    kl = gaussian_kl(old_mean, old_log_std, mean, log_std)
    kl = (kl * pre_batch.mask).sum() / pre_batch.mask.sum()
    if rows is not None:
        kl = kl + latent_kl(model, old["context"], params["context"])
    return kl


def update_eta(eta: float, kl: float, target: float) -> float:
    """ProMP's adaptive KL coefficient: x2 if ``kl > 1.5 target``, /2 if ``kl < target / 1.5``."""
    if target <= 0 or eta <= 0:
        raise ValueError(f"eta and the KL target must be > 0, got {eta}, {target}")
    if kl > 1.5 * target:
        return eta * 2.0
    if kl < target / 1.5:
        return eta / 2.0
    return eta


def meta_loss(model: GaussianMLPPolicy, params: Params, old_params: Params,
              pre_batches: Sequence[EpisodeBatch], pre_advs: Sequence[Tensor],
              post_batch: EpisodeBatch, post_adv: Tensor, inner_lr: float | Tensor | Params,
              num_steps: int, eta: float, inner_loss: InnerLossName = "lvc",
              first_order: bool = False, inner_clip: float = math.inf,
              outer_clip: float = 0.3, adapted: Params | None = None,
              dynamics_coef: float = 0.0) -> tuple[Tensor, dict[str, float]]:
    """The loss of one outer Adam step: ``outer_loss(adapt(theta)) + eta * kl_penalty``,
    plus ``dynamics_coef * dynamics loss(adapt(theta), post_batch)`` with the "dynamics"
    inner loss (:func:`task_dynamics_losses`, mean over tasks).

    Arguments are those of :func:`adapt`, :func:`outer_loss` and :func:`kl_penalty` (the
    penalty is measured on ``pre_batches[0]``, the data sampled with ``old_params``).
    ``adapted``: ``adapt(theta)`` already computed with these arguments (its graph back to
    ``params`` kept), e.g. while sampling; then the inner step is not run again and the
    ``inner_*`` stats are left out.

    Returns:
        ``(scalar loss, stats)``: stats are :func:`outer_loss`'s plus ``loss``,
        ``kl_penalty``, ``eta``, ``inner_loss_k`` / ``inner_kl_k`` (mean over tasks) for
        each inner step ``k`` and, with the "dynamics" inner loss, ``dynamics_loss`` (the
        post-update data's, before the coefficient). ``inner_kl_0`` is 0 while
        ``params == old_params`` (the first step's ratio is 1 there).
    """
    inner_stats: dict[str, float] = {}
    if adapted is None:
        adapted, inner_losses, inner_kls = adapt(model, params, pre_batches, pre_advs,
                                                 inner_lr, num_steps, inner_loss, first_order,
                                                 inner_clip)
        for k in range(num_steps):
            inner_stats[f"inner_loss_{k}"] = inner_losses[k].mean().item()
            inner_stats[f"inner_kl_{k}"] = inner_kls[k].mean().item()
    outer, stats = outer_loss(model, adapted, post_batch, post_adv, outer_clip)
    kl = kl_penalty(model, params, old_params, pre_batches[0])
    loss = outer + eta * kl
    if inner_loss == "dynamics":
        dynamics = task_dynamics_losses(model, adapted, post_batch).mean()
        stats["dynamics_loss"] = dynamics.item()
        loss = loss + dynamics_coef * dynamics
    stats.update(loss=loss.item(), kl_penalty=kl.item(), eta=float(eta), **inner_stats)
    return loss, stats
