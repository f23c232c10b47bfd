"""Sample, adapt, sample again: the data-collection loop shared by training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from metarobot.algos import maml
from metarobot.core.advantages import compute_advantages
from metarobot.core.batch import EpisodeBatch
from metarobot.core.inner import step_sizes
from metarobot.core.policy import GaussianMLPPolicy, Params, latent_log_prob
from metarobot.training.config import AdvantageConfig, InnerConfig
from sim_envs.tasks import Task


class Sampler(Protocol):
    def sample(self, model: GaussianMLPPolicy, params: Params, tasks: list[Task],
               episodes_per_task: int, *, seed: int, generator: torch.Generator,
               deterministic: bool = False) -> EpisodeBatch: ...


@dataclass
class AdaptationRollouts:
    """Data of ``steps`` adaptation steps on ``M`` tasks.

    Attributes:
        batches: ``steps + 1`` batches; batch ``k`` was sampled with the k-times adapted
            parameters (batch 0 with theta itself).
        advs: advantages ``[M, E, T]`` of each batch (baseline refit per task and step).
        explained_variance: baseline explained variance ``[M]`` of each batch.
        adapted: parameters after ``steps`` inner steps, stacked ``[M, ...]``; a
            differentiable function of theta when ``keep_graph`` was set.
    """

    batches: list[EpisodeBatch]
    advs: list[Tensor]
    explained_variance: list[Tensor]
    adapted: Params


def sample_episodes(sampler: Sampler, model: GaussianMLPPolicy, params: Params,
                    tasks: list[Task], episodes_per_task: int, *, seed: int,
                    generator: torch.Generator, deterministic: bool = False) -> EpisodeBatch:
    """``sampler.sample`` with ``params`` stacked ``[M, ...]``, and for a policy with a
    per-episode latent (``model.context_noise`` > 0) each episode's latent drawn from
    ``generator`` (``[M, E, C]``, before the sampler's action noise; the context itself
    when ``deterministic``). The sampler runs each (task, episode) as a task of its own
    with that latent as its context (reset seeds ``(seed, m * E + e, 0)``); the batch is
    returned as ``[M, E, ...]`` with ``latent`` and ``latent_logp`` set."""
    if not model.context_noise:
        return sampler.sample(model, params, tasks, episodes_per_task, seed=seed,
                              generator=generator, deterministic=deterministic)
    num_tasks, num_eps = len(tasks), episodes_per_task
    context = params["context"]  # [M, C]
    noise = torch.randn((num_tasks, num_eps, model.context_dim), generator=generator,
                        device=generator.device).to(context.device)
    latent = context[:, None] + (0.0 if deterministic else model.context_noise) * noise
    episode_params = {k: v.repeat_interleave(num_eps, 0) for k, v in params.items()}
    episode_params["context"] = latent.reshape(num_tasks * num_eps, -1)
    flat = sampler.sample(model, episode_params, [t for t in tasks for _ in range(num_eps)],
                          1, seed=seed, generator=generator, deterministic=deterministic)
    per_task = {k: x.reshape(num_tasks, num_eps, *x.shape[2:])
                for k, x in flat.tensors().items()}
    return EpisodeBatch(**per_task, latent=latent,
                        latent_logp=latent_log_prob(model, context[:, None], latent))


def adapt_params(model: GaussianMLPPolicy, params: Params, batches: list[EpisodeBatch],
                 advs: list[Tensor], inner: InnerConfig, meta_sgd_lr: Params | None,
                 stacked: bool = False) -> tuple[Params, Tensor, Tensor]:
    """``len(batches)`` inner steps, step k on ``batches[k]`` (see :func:`maml.adapt`), with
    the rates of :func:`metarobot.core.inner.step_sizes` (Meta-SGD's learned ones when given,
    else ``inner.lr``; 0 for what ``inner.adapt`` leaves alone). ``stacked``: ``params``
    hold one set per task ``[M, ...]`` instead of one shared theta."""
    one_task = {k: v[0] for k, v in params.items()} if stacked else params
    rates = step_sizes(inner.adapt, inner.lr, one_task, meta_sgd_lr)
    return maml.adapt(model, params, batches, advs, rates, num_steps=len(batches),
                      inner_loss=inner.loss, first_order=inner.first_order, clip=inner.loss_clip,
                      stacked=stacked)


def collect_adaptation_rollouts(
    sampler: Sampler, model: GaussianMLPPolicy, params: Params, tasks: list[Task],
    episodes: int, steps: int, inner: InnerConfig, advantages: AdvantageConfig,
    meta_sgd_lr: Params | None, seed: int, generator: torch.Generator,
    keep_graph: bool = False, stacked: bool = False,
) -> AdaptationRollouts:
    """Sample with theta, adapt on that data, sample with the adapted policy, ``steps`` times.

    The adaptation of each step is computed once; sampling uses a detached copy, and with
    ``keep_graph`` the returned ``adapted`` keeps the graph back to ``params`` so the first
    outer step can reuse it instead of adapting again. ``stacked``: ``params`` hold one
    set per task ``[M, ...]`` (ES-MAML's perturbed thetas) instead of one shared theta.
    """
    num_tasks = len(tasks)
    adapted = {k: v.detach() if stacked else v.detach().expand(num_tasks, *v.shape)
               for k, v in params.items()}
    batches, advs, evs = [], [], []
    for k in range(steps + 1):
        sampling_params = {n: v.detach() for n, v in adapted.items()}
        batch = sample_episodes(sampler, model, sampling_params, tasks, episodes,
                                seed=seed + 7919 * k, generator=generator)
        adv, ev = compute_advantages(batch.obs, batch.rew, batch.mask, advantages.gamma,
                                     advantages.lam, advantages.normalize)
        batches.append(batch)
        advs.append(adv)
        evs.append(ev)
        if k < steps:
            with torch.enable_grad() if keep_graph else torch.no_grad():
                adapted, _, _ = adapt_params(model, params, batches, advs, inner, meta_sgd_lr,
                                             stacked)
    return AdaptationRollouts(batches, advs, evs, adapted)
