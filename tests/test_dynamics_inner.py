"""The self-supervised inner loss ``inner.loss: dynamics`` (context adaptation by a
dynamics model, ``policy.dynamics_hidden``).

The inner step moves only the context, down the gradient of the dynamics model's
prediction error on the task's own transitions; the outer objective adds
``inner.dynamics_coef`` times that error on the post-update data.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.func import vmap

from metarobot import api
from metarobot.algos import maml
from metarobot.core import inner
from metarobot.core.advantages import compute_advantages
from metarobot.core.batch import EpisodeBatch
from metarobot.core.inner import CONTEXT_NAME, InnerBatch, step_sizes
from metarobot.core.policy import (
    GaussianMLPPolicy,
    ParamLayout,
    dynamics_forward,
    log_prob,
    policy_forward,
    rows_policy_forward,
)
from metarobot.sampling.buffers import EpisodeBuffers
from metarobot.training.trainer import MetaTrainer

NUM_TASKS, EPISODES, HORIZON, OBS_DIM, ACT_DIM, CONTEXT_DIM = 2, 3, 6, 3, 2, 2
#: reach-cpu with a context, the dynamics loss and a tiny budget.
TINY = ["meta_batch.tasks=2", "meta_batch.episodes=2", "sampler.num_workers=0",
        "sampler.envs_per_worker=4", "iterations=2", "checkpoint_every=1", "device=cpu",
        "policy.hidden=[16, 16]", "policy.context_dim=3", "policy.dynamics_hidden=[16]",
        "inner.adapt=context", "inner.loss=dynamics", "inner.lr=1.0", "outer.epochs=2"]


def tiny_model() -> GaussianMLPPolicy:
    torch.manual_seed(0)
    model = GaussianMLPPolicy(OBS_DIM, ACT_DIM, (8,), init_log_std=-0.3,
                              context_dim=CONTEXT_DIM, dynamics_hidden=(8,)).double()
    with torch.no_grad():  # a trained policy's last layer is not ~0: the context matters
        model.mean_net[-1].weight.normal_(0.0, 0.5)
    return model


def stacked(params):
    return {k: v.detach().expand(NUM_TASKS, *v.shape) for k, v in params.items()}


def sample_batch(model, task_params, seed) -> tuple[EpisodeBatch, torch.Tensor]:
    """Episodes of a linear system whose drift differs per task (what the context must
    identify); ``logp`` under ``task_params`` (stacked), varied episode lengths."""
    gen = torch.Generator().manual_seed(seed)
    shape = (NUM_TASKS, EPISODES, HORIZON)
    act = torch.randn(*shape, ACT_DIM, generator=gen, dtype=torch.float64)
    drift = torch.tensor([[0.5, -0.3, 0.2], [-0.4, 0.1, 0.6]], dtype=torch.float64)
    obs = torch.zeros(*shape, OBS_DIM, dtype=torch.float64)
    obs[:, :, 0] = torch.randn(NUM_TASKS, EPISODES, OBS_DIM, generator=gen, dtype=torch.float64)
    for t in range(HORIZON - 1):
        obs[:, :, t + 1] = (0.9 * obs[:, :, t] + drift[:, None]
                            + 0.3 * act[:, :, t].sum(-1, keepdim=True))
    lengths = torch.randint(3, HORIZON + 1, shape[:2], generator=gen)
    mask = (torch.arange(HORIZON) < lengths[..., None]).to(torch.float64)
    obs, act = obs * mask[..., None], act * mask[..., None]  # padding as the sampler's
    rew = torch.randn(*shape, generator=gen, dtype=torch.float64) * mask
    with torch.no_grad():
        logp = vmap(lambda p, o, a: log_prob(model, p, o, a))(task_params, obs, act)
    batch = EpisodeBatch(obs, act, rew, mask, logp, torch.zeros(shape[:2], dtype=torch.float64))
    return batch, compute_advantages(obs, rew, mask)[0]


def test_the_dynamics_loss_ignores_padding_and_pairs_across_episodes():
    """Two episodes of horizon 3, the second 2 steps long: the transitions are (0->1),
    (1->2) of the first and (0->1) of the second; the model predicts a constant b."""
    model = GaussianMLPPolicy(2, 1, (4,), context_dim=1, dynamics_hidden=(4,))
    params = {k: v.detach().clone() for k, v in model.init_params().items()}
    b = torch.tensor([0.5, -1.0])
    params["dyn.2.weight"] = torch.zeros_like(params["dyn.2.weight"])
    params["dyn.2.bias"] = b
    obs = torch.tensor([[0.0, 0.0], [1.0, 2.0], [1.0, 0.0],      # episode 0
                        [5.0, 5.0], [5.5, 4.0], [99.0, -99.0]])  # episode 1 (+ padding)
    weight = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    batch = InnerBatch(obs, torch.randn(6, 1), torch.zeros(6), torch.zeros(6), weight)
    deltas = torch.tensor([[1.0, 2.0], [0.0, -2.0], [0.5, -1.0]])
    want = ((b - deltas) ** 2).mean(-1).mean()  # (0.625 + 3.125 + 0) / 3
    loss, _ = inner.dynamics_loss(model, params, batch, horizon=3)
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(inner.transition_weights(weight, 3),
                               torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0]))
    garbage = obs.clone()
    garbage[5] = torch.tensor([-7.0, 3.0])  # the padding's values are never read
    moved, _ = inner.dynamics_loss(model, params, batch._replace(obs=garbage), horizon=3)
    assert moved == loss
    # Through the table and vmap, as the trainer calls it: the same number.
    table = inner.INNER_LOSS_FUNCTIONS["dynamics"](model, params, batch, math.inf, 3)[0]
    assert table == loss


def test_the_policy_ignores_the_dynamics_model():
    model = tiny_model()
    params = {k: v.detach() for k, v in model.init_params().items()}
    other = {k: (v + 1.0 if k.startswith("dyn.") else v) for k, v in params.items()}
    obs = torch.randn(4, OBS_DIM, dtype=torch.float64)
    assert torch.equal(policy_forward(model, params, obs)[0], policy_forward(model, other, obs)[0])
    assert torch.equal(rows_policy_forward(model, params, obs)[0],
                       rows_policy_forward(model, other, obs)[0])
    act = torch.randn(4, ACT_DIM, dtype=torch.float64)
    assert not torch.equal(dynamics_forward(model, params, obs, act),
                           dynamics_forward(model, other, obs, act))
    # A policy without the model has the same parameters as before it existed.
    plain = GaussianMLPPolicy(OBS_DIM, ACT_DIM, (8,), context_dim=CONTEXT_DIM)
    assert not any(n.startswith("dyn.") for n, _ in plain.named_parameters())
    with pytest.raises(ValueError, match="context"):
        GaussianMLPPolicy(OBS_DIM, ACT_DIM, (8,), dynamics_hidden=(8,))


def test_the_inner_step_changes_only_the_context_and_reduces_the_dynamics_loss():
    model = tiny_model()
    params = model.init_params()
    batch, adv = sample_batch(model, stacked(params), seed=1)
    rates = step_sizes("context", 0.5, params, None)
    adapted, losses, kls = maml.adapt(model, params, [batch], [adv], rates, 1, "dynamics")
    theta = stacked(params)
    for k in params:
        if k == CONTEXT_NAME:
            assert not torch.equal(adapted[k], theta[k])
        else:
            assert torch.equal(adapted[k], theta[k]), k
    before = maml.task_dynamics_losses(model, theta, batch)
    after = maml.task_dynamics_losses(model, adapted, batch)
    torch.testing.assert_close(losses[0], before)
    assert (after < before).all(), (before, after)
    assert (kls[0].abs() < 1e-12).all()  # at the sampling parameters the ratio is 1


def _meta_problem(model, params, lr=0.5):
    rates = step_sizes("context", lr, params, None)
    pre, adv = sample_batch(model, stacked(params), seed=1)
    adapted, _, _ = maml.adapt(model, params, [pre], [adv], rates, 1, "dynamics")
    post, post_adv = sample_batch(model, {k: v.detach() for k, v in adapted.items()}, seed=2)
    return rates, pre, adv, post, post_adv


def _dyn_grads(model, params, coef, first_order):
    rates, pre, adv, post, post_adv = _meta_problem(model, params)
    loss, stats = maml.meta_loss(model, params, params, [pre], [adv], post, post_adv, rates,
                                 1, eta=0.5, inner_loss="dynamics", first_order=first_order,
                                 dynamics_coef=coef)
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    out = {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(params.items(), grads)}
    return out, stats


@pytest.mark.parametrize("coef, first_order, reaches_model", [
    (0.0, False, True),   # the second-order path alone: through the adapted context
    (0.0, True, False),   # first order, no coefficient: no path to the model at all
    (1.0, True, True),    # the coefficient's term alone
    (1.0, False, True)])
def test_the_outer_gradient_reaches_the_model_through_both_paths(coef, first_order,
                                                                 reaches_model):
    model = tiny_model()
    params = model.init_params()
    grads, stats = _dyn_grads(model, params, coef, first_order)
    model_norm = sum(g.norm() ** 2 for k, g in grads.items() if k.startswith("dyn.")) ** 0.5
    assert (model_norm > 1e-8) == reaches_model, model_norm
    assert grads["mean_net.0.weight"].norm() > 0 and stats["dynamics_loss"] > 0


def test_the_meta_gradient_of_the_dynamics_objective_matches_finite_differences():
    """Second order through the context step and the coefficient's term together: the
    directional derivative along a random direction, against a central difference."""
    model = tiny_model()
    params = model.init_params()
    rates, pre, adv, post, post_adv = _meta_problem(model, params)

    def objective(p):
        return maml.meta_loss(model, p, params, [pre], [adv], post, post_adv, rates, 1,
                              eta=0.5, inner_loss="dynamics", dynamics_coef=0.7)[0]

    loss = objective(params)
    grads = torch.autograd.grad(loss, list(params.values()))
    gen = torch.Generator().manual_seed(5)
    direction = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
    analytic = sum((g * direction[k]).sum() for k, g in zip(params, grads))
    h = 1e-6
    with torch.no_grad():
        plus = objective({k: v + h * direction[k] for k, v in params.items()})
        minus = objective({k: v - h * direction[k] for k, v in params.items()})
    numeric = (plus - minus) / (2 * h)
    assert abs(analytic.item() - numeric.item()) <= 1e-6 * max(1.0, abs(numeric.item()))


@pytest.mark.parametrize("overrides, key", [
    (["inner.loss=dynamics", "policy.dynamics_hidden=[8]"], "inner.loss"),  # no context
    (["inner.loss=dynamics", "inner.adapt=context", "policy.context_dim=2"], "inner.loss"),
    (["inner.loss=dynamics", "inner.adapt=context", "policy.context_dim=2",
      "policy.dynamics_hidden=[8]", "outer.algo=reptile"], "inner.loss"),
    (["policy.dynamics_hidden=[8]"], "policy.dynamics_hidden"),  # a model nothing trains
    (["inner.dynamics_coef=-1"], "inner.dynamics_coef"),
    (["inner.dynamics_coef=.inf"], "inner.dynamics_coef")])
def test_config_validation_names_the_key(overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        api.resolve_config("reach-cpu", overrides=overrides)


def test_two_iterations_train_log_checkpoint_and_evaluate(tmp_path):
    cfg = api.resolve_config("reach-cpu", overrides=TINY)
    trainer = MetaTrainer(cfg, tmp_path / "run", progress=False)
    before = {k: v.detach().clone() for k, v in trainer.params.items()}
    trainer.train()
    assert trainer.iteration == 2
    for k in ("dyn.0.weight", "dyn.2.bias", "mean_net.0.weight", CONTEXT_NAME):
        assert not torch.equal(before[k], trainer.params[k]), k
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text()
               .splitlines()]
    scalars = [r for r in records if "iteration" in r and "return/pre" in r]
    assert len(scalars) == 2
    for record in scalars:
        for key in ("inner/dynamics_loss_pre", "inner/dynamics_loss_post",
                    "outer/dynamics_loss"):
            assert math.isfinite(record[key]) and record[key] > 0, (key, record)

    result = api.evaluate(tmp_path / "run", adapt_steps=1, num_tasks=2, episodes=2)
    assert result.returns.shape == (2, 2) and all(math.isfinite(r) for r in
                                                  result.returns.ravel())


@pytest.fixture(scope="module")
def dynamics_run(tmp_path_factory):
    """One tiny trained run with the dynamics inner loss (export reads only theta)."""
    run = tmp_path_factory.mktemp("dyn") / "run"
    cfg = api.resolve_config("reach-cpu", overrides=TINY[:-2] + ["iterations=1",
                                                                 "outer.epochs=1"])
    MetaTrainer(cfg, run, progress=False).train()
    return run


def test_the_device_takes_the_trainers_dynamics_step(dynamics_run, tmp_path):
    """Export, record episodes of different lengths on the torch-free runtime, adapt:
    the device's new parameters are the trainer's own inner step (``maml.adapt`` on the
    same episodes, padded as the sampler pads them) to float32 precision, and only the
    context moved. Episode boundaries matter: pairing the last step of one episode with
    the first of the next would change the step."""
    from deploy import AdaptivePolicy, SafetyConfig
    from metarobot.training.evaluate import load_trained_policy

    out = api.export(dynamics_run, tmp_path / "bundle", unrolled_steps=(1,))
    meta = json.loads((out / "manifest.json").read_text())["metadata"]
    assert meta["inner"]["loss"] == "dynamics"
    device = AdaptivePolicy.load(out, family="reach", seed=0,
                                 safety=SafetyConfig(max_kl=1e6, max_update_norm=1e6,
                                                     trial_episodes=0))
    rng = np.random.default_rng(0)
    lengths = (12, 7, 10)
    for length in lengths:
        obs = rng.standard_normal(device.obs_dim).astype(np.float32)
        for t in range(length):
            action = device.act(obs)
            next_obs = (0.9 * obs + 0.1 * np.resize(action, obs.shape)).astype(np.float32)
            device.observe(obs, action, 0.0, False, t == length - 1)
            obs = next_obs
    episodes = device.recorded_episodes()
    theta = device.params
    report = device.adapt(1)
    assert report.accepted and report.applied, report

    policy = load_trained_policy(dynamics_run)
    model, params = policy.model, {k: v.detach() for k, v in policy.params.items()}
    rates = step_sizes("context", policy.config.inner.lr, params, None)
    layout = ParamLayout.of(params)

    def trainer_step(eps: list[dict[str, np.ndarray]]) -> np.ndarray:
        """``maml.adapt`` on ``eps`` as one task's batch, padded by the sampler's buffers."""
        buffers = EpisodeBuffers(1, len(eps), max(len(e["rew"]) for e in eps),
                                 device.obs_dim, device.act_dim)
        for j, e in enumerate(eps):
            n = len(e["rew"])
            buffers.record_actions(buffers.rows(0, j, np.arange(n)), e["obs"], e["act"],
                                   e["logp"])
            buffers.finish(0, j, n, False)
        batch = buffers.to_batch(torch.device("cpu"))
        adapted, _, _ = maml.adapt(model, params, [batch], [torch.zeros_like(batch.rew)],
                                   rates, 1, "dynamics")
        return layout.flatten({k: v[0] for k, v in adapted.items()}).numpy()

    want = trainer_step(episodes)
    np.testing.assert_allclose(device.params, want, rtol=1e-4, atol=1e-5)
    moved = np.flatnonzero(device.params != theta)
    start = layout.offsets[layout.names.index(CONTEXT_NAME)]
    assert moved.size and set(moved) <= set(range(start, start + 3)), moved

    # Pairing across the episode boundaries (one long episode) gives another step.
    joined = trainer_step([{k: np.concatenate([e[k] for e in episodes]) for k in episodes[0]}])
    step = np.abs(want - theta).max()
    assert step > 0 and np.abs(joined - want).max() > 0.05 * step, step


def test_only_the_lvc_and_dynamics_losses_make_an_adapt_graph():
    from deploy.bundle import ADAPT_LOSSES, BundleError, InnerSpec
    assert ADAPT_LOSSES == inner.EXPORTABLE_INNER_LOSSES  # the writer's and the reader's
    model = tiny_model()
    layout = ParamLayout.of(model.init_params())
    flat = torch.zeros(layout.size, dtype=torch.float64)
    batch = InnerBatch(*(torch.zeros(4, d, dtype=torch.float64) for d in (OBS_DIM, ACT_DIM)),
                       *(torch.zeros(4, dtype=torch.float64) for _ in range(3)))
    with pytest.raises(ValueError, match="adapt graph holds one of"):
        inner.inner_steps_flat(model, layout, flat, batch, torch.tensor(0.1), torch.tensor(1.0),
                               loss="dice")
    spec = {"loss": "dice", "lr": 0.1, "clip": 1.0, "steps": 1, "gamma": 0.99, "lam": 0.95,
            "baseline": "linear_feature"}
    with pytest.raises(BundleError, match="inner loss must be one of"):
        InnerSpec.from_dict(spec)
    assert InnerSpec.from_dict({**spec, "loss": "dynamics"}).loss == "dynamics"
