"""RL2 (Duan et al. 2016): meta-learning by memory, trained with PPO over whole trials.

A *trial* is E consecutive episodes of one task, sampled with the GRU policy's hidden
state carried across the episode boundaries
(:meth:`metarobot.sampling.sampler.MultiTaskSampler.sample_trials`). The trial is one
sequence for the objective: the return, the baseline and GAE run across its episodes
(discounted), so acting to learn about the task in episode 1 is credited with the return
it earns in the episodes after it. Nothing adapts by gradient at test time: the hidden
state is the adaptation.

One update (:func:`update`), top to bottom:

1. pack each task's real steps in order into one sequence ``[M, L]`` (:func:`pack_trials`)
   with the previous action, reward and episode-end flag of every step;
2. advantages over the packed trials with the project's linear feature baseline (one fit
   for all trials) and GAE (:func:`trial_advantages`,
   :func:`metarobot.core.advantages.compute_advantages`);
3. ``outer.epochs`` epochs of the PPO-clip loss, each one Adam step per minibatch of
   trials (``outer.minibatches``, a fresh random split every epoch), the policy re-run
   over the trials with truncated backpropagation through time (the state is detached
   every ``outer.tbptt`` steps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from metarobot.core.advantages import compute_advantages
from metarobot.core.batch import EpisodeBatch
from metarobot.core.policy import Params, gaussian_entropy, gaussian_log_prob
from metarobot.core.recurrent import GaussianGRUPolicy, TrialInputs, recurrent_sequence


class PackedTrials(NamedTuple):
    """Each task's trial as one sequence ``[M, L]`` (``L = E * T``): its real steps in
    order (episode by episode), then padding (``mask`` 0).

    Attributes:
        inputs: the policy's step inputs (:class:`TrialInputs`).
        act: ``[M, L, A]`` sampled actions; logp, rew: ``[M, L]``.
        episode: ``[M, L]`` the episode index of every step (-1 on padding).
    """

    inputs: TrialInputs
    act: Tensor
    logp: Tensor
    rew: Tensor
    episode: Tensor


def pack_trials(batch: EpisodeBatch) -> PackedTrials:
    """``[M, E, T]`` episodes -> one sequence per task (see :class:`PackedTrials`).

    The previous action and reward of a step are those of the real step before it in
    the trial (0 at the first step); ``prev_done`` is 1 on the first step of every
    episode after the first: exactly what the sampler fed the policy.
    """
    num_tasks, num_eps, horizon = batch.mask.shape
    mask = batch.mask.flatten(1)  # [M, E*T]
    order = torch.argsort(1.0 - mask, dim=1, stable=True)  # real steps first, in order

    def take(x: Tensor) -> Tensor:
        flat = x.flatten(1, 2)
        index = order.reshape(*order.shape, *([1] * (flat.dim() - 2))).expand_as(flat)
        return flat.gather(1, index)

    step = torch.arange(horizon, device=mask.device).expand(num_tasks, num_eps, horizon)
    episode = torch.arange(num_eps, device=mask.device)[:, None].expand(num_tasks, num_eps,
                                                                        horizon)
    mask_p, act, rew = take(batch.mask), take(batch.act), take(batch.rew)
    first = take((step == 0).to(mask.dtype))

    def previous(x: Tensor) -> Tensor:
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)

    prev_done = torch.cat([torch.zeros_like(first[:, :1]), first[:, 1:]], 1) * mask_p
    inputs = TrialInputs(take(batch.obs), previous(act) * mask_p[..., None],
                         previous(rew) * mask_p, prev_done, mask_p)
    episode_p = torch.where(mask_p > 0, take(episode), torch.full_like(mask_p, -1).long())
    return PackedTrials(inputs, act, take(batch.logp), rew, episode_p)


def trial_advantages(trials: PackedTrials, gamma: float, lam: float, normalize: bool = True,
                     ) -> tuple[Tensor, Tensor]:
    """GAE over each whole trial (the return and the bootstrap run across its episodes),
    with one linear feature baseline fit on all the trials of the batch (its time feature
    counts the steps of the trial) and the advantages normalised over the batch.

    One baseline for all tasks, not one per task as in MAML's inner step: a task has a
    single trial here, which a per-task fit would interpolate (advantages 0), and at the
    start of a trial the policy does not know the task, so its value is the value over
    tasks. Returns ``(adv [M, L], explained variance [1])``.
    """
    inputs = trials.inputs
    adv, ev = compute_advantages(inputs.obs[None], trials.rew[None], inputs.mask[None],
                                 gamma, lam, normalize)
    return adv[0], ev


def ppo_loss(model: GaussianGRUPolicy, params: Params, trials: PackedTrials, adv: Tensor,
             clip: float, tbptt: int, entropy_coef: float = 0.0,
             ) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO-clip loss over the trials (mean over real steps) minus ``entropy_coef`` times
    the policy's entropy, the policy re-run from the trials' start with truncated BPTT
    every ``tbptt`` steps; and statistics."""
    inputs = trials.inputs
    h0 = model.initial_state(inputs.mask.shape[0])
    mean, log_std, _ = recurrent_sequence(model, params, inputs, h0, tbptt)
    logp = gaussian_log_prob(mean, log_std, trials.act)
    ratio = torch.exp(logp - trials.logp)
    surrogate = torch.min(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)
    steps = inputs.mask.sum().clamp_min(1.0)
    entropy = gaussian_entropy(log_std[:, 0]).mean()
    loss = -(surrogate * inputs.mask).sum() / steps - entropy_coef * entropy
    with torch.no_grad():
        log_ratio = (logp - trials.logp) * inputs.mask
        stats = {"outer_kl": ((ratio - 1.0) * inputs.mask - log_ratio).sum() / steps,
                 "clip_frac": (((ratio - 1.0).abs() > clip).float() * inputs.mask).sum() / steps,
                 "entropy": entropy.detach()}
    return loss, stats


def select(trials: PackedTrials, index: Tensor) -> PackedTrials:
    """The trials ``index`` ``[m]`` of the batch (every field's first dimension)."""
    return PackedTrials(TrialInputs(*(x[index] for x in trials.inputs)), trials.act[index],
                        trials.logp[index], trials.rew[index], trials.episode[index])


def update(model: GaussianGRUPolicy, params: Params, trials: PackedTrials, adv: Tensor,
           epochs: int, clip: float, tbptt: int, apply_step: Callable[[Tensor], bool],
           minibatches: int = 1, generator: torch.Generator | None = None,
           entropy_coef: float = 0.0) -> dict[str, float]:
    """``epochs`` passes of :func:`ppo_loss`, one Adam step per minibatch of trials
    (``minibatches`` equal shares, split at random by ``generator`` each epoch; 1: the
    whole batch). ``params`` change in place through ``apply_step``, the trainer's
    backward-clip-and-step with its non-finite checks; a skipped step (False) ends the
    update, as in PPO-MAML's (:func:`metarobot.algos.promp.update`). Returns the
    first step's loss and the last step's statistics."""
    num_trials = adv.shape[0]

    def shares():  # each epoch's split is drawn when the epoch starts
        for _ in range(epochs):
            order = (torch.arange(num_trials) if minibatches == 1
                     else torch.randperm(num_trials, generator=generator))
            yield from order.tensor_split(minibatches)

    first_loss, stats = None, {}
    for index in shares():
        part = trials if minibatches == 1 else select(trials, index)
        loss, stats = ppo_loss(model, params, part, adv[index], clip, tbptt, entropy_coef)
        first_loss = loss.item() if first_loss is None else first_loss
        if not apply_step(loss):
            break
    return {"outer_loss": float(first_loss), **{k: v.item() for k, v in stats.items()}}
