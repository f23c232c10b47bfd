"""Context adaptation (CAVIA): ``policy.context_dim`` and ``inner.adapt: context``.

The inner step changes only the policy's context input, in training, in the exported adapt
graph and on the device; everything else is the ordinary pipeline.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deploy import AdaptivePolicy, SafetyConfig
from metarobot import api
from metarobot.core.inner import CONTEXT_NAME, InnerBatch, inner_step, step_sizes
from metarobot.core.policy import (
    GaussianMLPPolicy,
    ParamLayout,
    policy_forward,
    rows_policy_forward,
)
from metarobot.training.trainer import MetaTrainer

TINY = ["meta_batch.tasks=2", "meta_batch.episodes=2", "sampler.num_workers=0",
        "sampler.envs_per_worker=4", "iterations=1", "checkpoint_every=1", "device=cpu",
        "policy.context_dim=4", "inner.adapt=context", "inner.lr=5.0"]


def _policy() -> tuple[GaussianMLPPolicy, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = GaussianMLPPolicy(6, 2, (16, 16), context_dim=3)
    params = {k: v.detach() for k, v in model.init_params().items()}
    # A trained policy's last layer is not ~0 (its init), so the context has an effect.
    params["mean_net.4.weight"] = torch.randn(2, 16)
    return model, params


def test_the_context_is_an_input_of_the_first_layer():
    model, params = _policy()
    obs = torch.randn(5, 6)
    other = dict(params, context=torch.tensor([1.0, -2.0, 0.5]))
    mean, _ = policy_forward(model, params, obs)
    moved, _ = policy_forward(model, other, obs)
    assert not torch.allclose(mean, moved)
    weight, bias = params["mean_net.0.weight"], params["mean_net.0.bias"]
    # Same as a first-layer bias of bias + W_context @ context: the CAVIA identity.
    shifted = dict(params, **{"mean_net.0.bias": bias + weight[:, 6:] @ other["context"]})
    torch.testing.assert_close(policy_forward(model, shifted, obs)[0], moved)


def test_the_samplers_row_forward_uses_each_rows_context():
    model, params = _policy()
    stacked = {k: v.expand(3, *v.shape).clone() for k, v in params.items()}
    stacked["context"] = torch.randn(3, 3)
    obs, index = torch.randn(7, 6), torch.tensor([0, 1, 2, 2, 1, 0, 1])
    mean, _ = rows_policy_forward(model, stacked, obs, index)
    for row, task in enumerate(index.tolist()):
        want, _ = policy_forward(model, {k: v[task] for k, v in stacked.items()}, obs[row])
        torch.testing.assert_close(mean[row], want, atol=1e-6, rtol=0)


def _with_yaw(proprio: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
    return torch.cat([proprio, torch.cos(yaw)[:, None], torch.sin(yaw)[:, None]], 1)


def test_a_rotated_context_asks_for_one_world_direction_whatever_the_yaw():
    torch.manual_seed(0)
    model = GaussianMLPPolicy(6, 2, (16, 16), context_dim=2, rotate_context=True)
    plain = GaussianMLPPolicy(6, 2, (16, 16), context_dim=2)
    params = {k: v.detach() for k, v in model.init_params().items()}
    params["mean_net.4.weight"] = torch.randn(2, 16)
    params["mean_net.0.weight"][:, 4:6] = 0.0  # the yaw reaches the policy only via the context
    proprio, yaw, turn = torch.randn(5, 4), torch.rand(5) * 6 - 3, 0.7
    world = torch.tensor([0.5, -0.2])
    mean, _ = policy_forward(model, dict(params, context=world), _with_yaw(proprio, yaw))
    # Turning the robot and the command together changes nothing ...
    c, s = np.cos(turn), np.sin(turn)
    turned = torch.tensor([c * 0.5 + s * 0.2, s * 0.5 - c * 0.2], dtype=torch.float32)
    again, _ = policy_forward(model, dict(params, context=turned), _with_yaw(proprio, yaw + turn))
    torch.testing.assert_close(again, mean, atol=1e-5, rtol=0)
    # ... turning the robot alone does; at yaw 0 it is the unrotated policy.
    other, _ = policy_forward(model, dict(params, context=world), _with_yaw(proprio, yaw + turn))
    assert not torch.allclose(other, mean, atol=1e-3)
    zero = _with_yaw(proprio, torch.zeros(5))
    torch.testing.assert_close(policy_forward(model, dict(params, context=world), zero)[0],
                               policy_forward(plain, dict(params, context=world), zero)[0])
    # The sampler's row forward rotates each row's own context by its own yaw.
    stacked = {k: v.expand(3, *v.shape).clone() for k, v in params.items()}
    stacked["context"] = torch.randn(3, 2)
    obs, index = _with_yaw(torch.randn(7, 4), torch.rand(7) * 6 - 3), torch.tensor(
        [0, 1, 2, 2, 1, 0, 1])
    rows, _ = rows_policy_forward(model, stacked, obs, index)
    for row, task in enumerate(index.tolist()):
        want, _ = policy_forward(model, {k: v[task] for k, v in stacked.items()}, obs[row])
        torch.testing.assert_close(rows[row], want, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="rotate_context"):
        GaussianMLPPolicy(6, 2, context_dim=3, rotate_context=True)


def test_a_world_frame_context_needs_the_yaw_observed():
    """The yaw it rotates by must be what the env puts last: a config without walk's
    ``observe_yaw`` would rotate by whatever else ends the observation."""
    ok = ["policy.context_dim=2", "policy.rotate_context=true", "inner.adapt=context"]
    api.resolve_config("walk-cpu", overrides=ok + ["env_kwargs.observe_yaw=true"])
    for extra in ([], ["env_kwargs.observe_yaw=false"]):
        with pytest.raises(ValueError, match=r"policy\.rotate_context.*observe_yaw"):
            api.resolve_config("walk-cpu", overrides=ok + extra)


def test_a_context_step_changes_only_the_context():
    model, params = _policy()
    rates = step_sizes("context", 2.0, params, None)
    assert isinstance(rates, dict) and set(rates) == set(params)
    assert all(not v.any() for k, v in rates.items() if k != CONTEXT_NAME)
    gen = torch.Generator().manual_seed(1)
    batch = InnerBatch(torch.randn(50, 6, generator=gen), torch.randn(50, 2, generator=gen),
                       torch.randn(50, generator=gen), torch.zeros(50), torch.ones(50))
    new, _, _ = inner_step(model, params, batch, rates)
    assert not torch.equal(new[CONTEXT_NAME], params[CONTEXT_NAME])
    assert all(torch.equal(new[k], params[k]) for k in params if k != CONTEXT_NAME)


def test_context_adaptation_needs_a_context():
    with pytest.raises(ValueError, match="inner.adapt"):
        api.resolve_config("reach-cpu", overrides=["inner.adapt=context"])


@pytest.mark.parametrize("meta_sgd", [False, True])
def test_train_export_and_device_adapt_only_the_context(tmp_path, meta_sgd):
    """One tiny iteration of training, the export, and one adaptation on the device:
    the device's new parameters differ from the meta-learned ones in the context only."""
    cfg = api.resolve_config("reach-cpu", overrides=TINY + [f"inner.meta_sgd={meta_sgd}"])
    trainer = MetaTrainer(cfg, tmp_path / "run", progress=False)
    before = {k: v.detach().clone() for k, v in trainer.params.items()}
    trainer.train()
    assert not torch.equal(before["mean_net.0.weight"], trainer.params["mean_net.0.weight"])
    if meta_sgd:  # one learned rate per context entry, none for the rest
        assert list(trainer.meta_sgd_lr) == [CONTEXT_NAME]

    out = api.export(tmp_path / "run", tmp_path / "bundle", unrolled_steps=(1,))
    policy = AdaptivePolicy.load(out, family="reach", seed=0,
                                 safety=SafetyConfig(max_kl=1e6, max_update_norm=1e6,
                                                     trial_episodes=0))
    layout = ParamLayout.of(trainer.params)
    start = layout.offsets[layout.names.index(CONTEXT_NAME)]
    context = slice(start, start + 4)
    theta = policy.params
    rng = np.random.default_rng(0)
    for _ in range(3):
        for t in range(20):
            obs = rng.standard_normal(policy.obs_dim).astype(np.float32)
            action = policy.act(obs)
            policy.observe(obs, action, float(obs[0] - np.sum(action ** 2)), False, t == 19)
    report = policy.adapt(1)
    assert report.accepted, report
    adapted = policy.params
    assert not np.array_equal(adapted[context], theta[context])
    outside = np.ones(layout.size, bool)
    outside[context] = False
    np.testing.assert_array_equal(adapted[outside], theta[outside])
