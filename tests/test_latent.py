"""The per-episode latent of ``policy.context_noise`` (MAESN-style structured exploration).

Each episode's context input is ``z = context + sigma * eps``, drawn once at its start.
The inner step moves the context toward the latents of the episodes that paid (the
latent's own likelihood-ratio term, :func:`metarobot.core.inner.latent_loss`); the
actions' terms treat ``z`` as data.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.func import vmap

from deploy import AdaptivePolicy
from metarobot import api
from metarobot.algos import maml
from metarobot.core.advantages import compute_advantages
from metarobot.core.batch import EpisodeBatch
from metarobot.core.inner import step_sizes
from metarobot.core.policy import GaussianMLPPolicy, latent_log_prob, log_prob, with_latent
from metarobot.sampling.rollouts import sample_episodes
from metarobot.sampling.sampler import MultiTaskSampler
from metarobot.training.trainer import MetaTrainer
from sim_envs.registry import env_id, make_family

NUM_TASKS, EPISODES, HORIZON, OBS_DIM, ACT_DIM, CONTEXT_DIM = 2, 4, 5, 3, 2, 2
SIGMA = 0.5
#: reach-cpu with a latent context and a tiny budget.
TINY = ["meta_batch.tasks=2", "meta_batch.episodes=3", "sampler.num_workers=0",
        "sampler.envs_per_worker=6", "iterations=2", "checkpoint_every=1", "device=cpu",
        "policy.hidden=[16, 16]", "policy.context_dim=2", "policy.context_noise=0.5",
        "inner.adapt=context", "inner.lr=1.0", "outer.epochs=2"]


def tiny_model() -> GaussianMLPPolicy:
    torch.manual_seed(0)
    model = GaussianMLPPolicy(OBS_DIM, ACT_DIM, (8,), init_log_std=-0.3,
                              context_dim=CONTEXT_DIM, context_noise=SIGMA).double()
    with torch.no_grad():  # a trained policy's last layer is not ~0: the latent matters
        model.mean_net[-1].weight.normal_(0.0, 0.5)
    return model


def latent_batch(model, params, seed) -> tuple[EpisodeBatch, torch.Tensor]:
    """Random episodes whose actions were drawn given each episode's latent, with
    ``latent_logp`` under the (per task) contexts of ``params`` (stacked)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (NUM_TASKS, EPISODES, HORIZON)
    obs = torch.randn(*shape, OBS_DIM, generator=gen, dtype=torch.float64)
    act = torch.randn(*shape, ACT_DIM, generator=gen, dtype=torch.float64)
    rew = torch.randn(*shape, generator=gen, dtype=torch.float64)
    mask = torch.ones(shape, dtype=torch.float64)
    mask[:, 0, -2:] = 0.0  # one shorter episode per task
    context = params["context"].detach()  # [M, C]
    latent = context[:, None] + SIGMA * torch.randn(NUM_TASKS, EPISODES, CONTEXT_DIM,
                                                    generator=gen, dtype=torch.float64)
    rows = latent[:, :, None].expand(*shape, CONTEXT_DIM)
    with torch.no_grad():
        logp = vmap(lambda p, z, o, a: log_prob(model, with_latent(p, z), o, a))(
            {k: v.detach() for k, v in params.items()}, rows, obs, act)
    batch = EpisodeBatch(obs, act, rew * mask, mask, logp,
                         torch.zeros(shape[:2], dtype=torch.float64), latent,
                         latent_log_prob(model, context[:, None], latent))
    return batch, compute_advantages(obs, rew * mask, mask)[0]


def stacked(params):
    return {k: v.detach().expand(NUM_TASKS, *v.shape) for k, v in params.items()}


def test_the_inner_step_moves_the_context_toward_the_latents_that_paid():
    """The step is ``lr * mean_e A_e (z_e - context) / sigma^2`` with ``A_e`` the episode's
    standardised return, whatever the actions' advantages; nothing else moves."""
    model = tiny_model()
    params = model.init_params()
    pre, adv = latent_batch(model, stacked(params), seed=1)
    lr = 0.3
    adapted, _, _ = maml.adapt(model, params, [pre], [adv], step_sizes("context", lr, params,
                                                                       None), 1)
    returns = pre.episode_returns
    episode_adv = (returns - returns.mean(1, keepdim=True)) / (
        returns.std(1, keepdim=True, unbiased=False) + 1e-8)
    expected = params["context"] + lr * (episode_adv[..., None] * (
        pre.latent - params["context"])).mean(1) / SIGMA ** 2
    torch.testing.assert_close(adapted["context"], expected, rtol=1e-10, atol=1e-12)
    for name in params:
        if name != "context":
            torch.testing.assert_close(adapted[name], params[name].expand_as(adapted[name]))


def test_a_full_step_moves_the_context_by_the_latent_term_alone():
    """With ``inner.adapt: all`` the other parameters take the actions' step and the
    context the latent's, the same as in a context-only step."""
    model = tiny_model()
    params = model.init_params()
    pre, adv = latent_batch(model, stacked(params), seed=7)
    full, _, _ = maml.adapt(model, params, [pre], [adv], 0.3, 1)
    context_only, _, _ = maml.adapt(model, params, [pre], [adv],
                                    step_sizes("context", 0.3, params, None), 1)
    torch.testing.assert_close(full["context"], context_only["context"])
    assert not torch.allclose(full["mean_net.0.weight"], context_only["mean_net.0.weight"])


def test_equal_returns_leave_the_context_where_it_is():
    """The actions' terms take the latent as data: with every episode of a task equally
    good the context gets no gradient from them, however the actions scored."""
    model = tiny_model()
    params = model.init_params()
    pre, adv = latent_batch(model, stacked(params), seed=2)
    flat = pre._replace(rew=pre.mask / pre.mask.sum(-1, keepdim=True))  # every return 1
    adapted, _, _ = maml.adapt(model, params, [flat], [adv], step_sizes("context", 1.0, params,
                                                                        None), 1)
    torch.testing.assert_close(adapted["context"],
                               params["context"].expand_as(adapted["context"]))


@pytest.mark.parametrize("first_order", [False, True])
def test_the_adapted_context_depends_on_the_pre_update_actions(first_order):
    """Through each episode's action likelihood ratio, the step's direction is a function
    of theta's action parameters (second order); FOMAML drops that path."""
    model = tiny_model()
    params = model.init_params()
    pre, adv = latent_batch(model, stacked(params), seed=6)
    adapted, _, _ = maml.adapt(model, params, [pre], [adv],
                               step_sizes("context", 0.3, params, None), 1,
                               first_order=first_order)
    grad = torch.autograd.grad(adapted["context"].sum(), params["mean_net.0.weight"],
                               allow_unused=True)[0]
    assert (grad is not None and grad.norm() > 1e-6) != first_order


def test_the_meta_gradient_with_latents_matches_finite_differences():
    """Through the latent step, the actions given the latent and the latent's outer term:
    a directional derivative against a central difference."""
    model = tiny_model()
    params = model.init_params()
    rates = step_sizes("context", 0.4, params, None)
    pre, adv = latent_batch(model, stacked(params), seed=3)
    adapted, _, _ = maml.adapt(model, params, [pre], [adv], rates, 1)
    post, post_adv = latent_batch(model, {k: v.detach() for k, v in adapted.items()}, seed=4)

    def objective(p):
        return maml.meta_loss(model, p, params, [pre], [adv], post, post_adv, rates, 1,
                              eta=0.5, outer_clip=0.3)

    loss, stats = objective(params)
    assert math.isfinite(stats["latent_loss"])
    grads = torch.autograd.grad(loss, list(params.values()))
    assert grads[list(params).index("context")].norm() > 0
    gen = torch.Generator().manual_seed(5)
    direction = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
    analytic = sum((g * direction[k]).sum() for k, g in zip(params, grads))
    h = 1e-6
    with torch.no_grad():
        plus = objective({k: v + h * direction[k] for k, v in params.items()})[0]
        minus = objective({k: v - h * direction[k] for k, v in params.items()})[0]
    numeric = (plus - minus) / (2 * h)
    assert abs(analytic.item() - numeric.item()) <= 1e-6 * max(1.0, abs(numeric.item()))


def test_sampled_episodes_each_act_on_their_own_latent():
    model = GaussianMLPPolicy(*_reach_dims(), (16,), init_log_std=-1.0, context_dim=2,
                              context_noise=1.0)
    with torch.no_grad():
        model.mean_net[-1].weight.normal_(0.0, 0.5)
    params = model.init_params()
    tasks = make_family("reach").sample_tasks(2, "train", seed=0)
    theta = {k: v.detach().expand(2, *v.shape) for k, v in params.items()}
    with MultiTaskSampler(env_id("reach"), 0, 6) as sampler:
        batch = sample_episodes(sampler, model, theta, tasks, 3, seed=0,
                                generator=torch.Generator().manual_seed(0))
        still = sample_episodes(sampler, model, theta, tasks, 3, seed=0, deterministic=True,
                                generator=torch.Generator().manual_seed(0))
    assert batch.obs.shape[:2] == (2, 3) and batch.latent.shape == (2, 3, 2)
    assert batch.success.shape == (2, 3) and batch.latent_logp.shape == (2, 3)
    assert len(set(batch.latent.reshape(-1).tolist())) == 12  # one draw per episode
    torch.testing.assert_close(batch.latent_logp,
                               latent_log_prob(model, theta["context"][:, None], batch.latent))
    # The recorded log-probabilities are those of the actions given each episode's latent.
    rows = batch.latent[:, :, None].expand(*batch.obs.shape[:-1], 2)
    with torch.no_grad():
        logp = log_prob(model, with_latent(params, rows), batch.obs, batch.act)
    torch.testing.assert_close(logp * batch.mask, batch.logp * batch.mask, rtol=1e-4,
                               atol=1e-4)
    torch.testing.assert_close(still.latent, theta["context"][:, None].expand(2, 3, 2))


def _reach_dims() -> tuple[int, int]:
    with MultiTaskSampler(env_id("reach"), 0, 1) as sampler:
        return sampler.obs_dim, sampler.act_dim


def test_two_iterations_train_evaluate_export_and_run_on_the_device(tmp_path):
    cfg = api.resolve_config("reach-cpu", overrides=TINY)
    trainer = MetaTrainer(cfg, tmp_path / "run", progress=False)
    before = trainer.params["context"].detach().clone()
    trainer.train()
    assert not torch.equal(before, trainer.params["context"])
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text()
               .splitlines()]
    scalars = [r for r in records if "iteration" in r and "return/pre" in r]
    assert len(scalars) == 2 and all(math.isfinite(r["outer/latent_loss"]) for r in scalars)
    result = api.evaluate(tmp_path / "run", adapt_steps=1, num_tasks=2, episodes=2)
    assert result.returns.shape == (2, 2) and torch.isfinite(torch.as_tensor(result.returns)).all()
    bundle = api.export(tmp_path / "run", tmp_path / "bundle", unrolled_steps=(1,))
    policy = AdaptivePolicy.load(bundle, family="reach", seed=0)
    assert policy.bundle.inner.latent_std == 0.5
    np.testing.assert_allclose(policy.bundle.params[policy.bundle.context_slice],
                               trainer.params["context"].detach().numpy(), rtol=1e-6)
    policy.close()


@pytest.mark.parametrize("overrides", [
    ["policy.context_noise=0.5"],  # no context
    ["policy.context_noise=0.5", "policy.context_dim=2", "inner.adapt=context",
     "outer.algo=reptile"],
    ["policy.context_noise=0.5", "policy.context_dim=2", "policy.dynamics_hidden=[8]",
     "inner.adapt=context", "inner.loss=dynamics"],
    ["policy.context_noise=-1"],
    ["policy.context_noise=.inf"]])
def test_config_validation_names_the_key(overrides):
    with pytest.raises(ValueError, match=r"policy\.context_noise"):
        api.resolve_config("reach-cpu", overrides=overrides)
