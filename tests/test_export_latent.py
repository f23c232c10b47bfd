"""A bundle of a policy with a per-episode latent and a world-frame context (walk's
``walk-skill-yaw-cpu``): the device runtime draws each episode's latent, and its adapt
graph takes the trainer's own step (:func:`metarobot.core.inner.latent_inner_loss`)."""

from __future__ import annotations

import math

import gymnasium
import numpy as np
import pytest
import torch

from deploy import AdaptivePolicy
from deploy.bundle import BundleError, InnerSpec, Layout, check_context_only_rates, open_session
from deploy.recorder import Episode, adaptation_data
from metarobot.algos import maml
from metarobot.core.batch import EpisodeBatch
from metarobot.core.policy import (
    GaussianMLPPolicy,
    ParamLayout,
    latent_log_prob,
    log_prob,
    policy_forward,
    with_latent,
)
from metarobot.export.bundle import export_bundle

OBS_DIM, ACT_DIM, SIGMA = 6, 2, 0.4
EPISODES, HORIZON = 4, 6
LENGTHS = (6, 4, 6, 5)  # episodes of different lengths: the device keeps real steps only
CONTEXT_RATES = (0.3, 0.7)  # Meta-SGD rates of the context; every other rate is 0


def make_policy() -> tuple[GaussianMLPPolicy, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    model = GaussianMLPPolicy(OBS_DIM, ACT_DIM, (16, 16), init_log_std=-0.5, context_dim=2,
                              context_noise=SIGMA, rotate_context=True)
    model.set_normalizer(torch.randn(OBS_DIM, generator=gen) * 0.1,
                         torch.rand(OBS_DIM, generator=gen) + 0.5)
    params = {k: (v + 0.3 * torch.randn(v.shape, generator=gen)).detach()
              for k, v in model.init_params().items()}
    return model.eval(), params


def rates(params: dict[str, torch.Tensor], context_only: bool = True) -> dict:
    out = {k: torch.zeros_like(v) for k, v in params.items()}
    out["context"] = torch.tensor(CONTEXT_RATES)
    if not context_only:
        out["log_std"] = torch.full_like(params["log_std"], 0.01)
    return out


def export(model, params, out, lr=None):
    obs_space = gymnasium.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
    act_space = gymnasium.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)
    inner = {"loss": "lvc", "lr": lr if lr is not None else rates(params), "clip": math.inf,
             "steps": 1, "gamma": 0.99, "lam": 0.95}
    return export_bundle(model, params, out, family="walk", env_id="sim_envs/Walk-v0",
                         observation_space=obs_space, action_space=act_space,
                         inner_config=inner, adapt_steps_options=(1, 2))


@pytest.fixture(scope="module")
def latent_bundle(tmp_path_factory):
    model, params = make_policy()
    return model, params, export(model, params, tmp_path_factory.mktemp("b") / "latent")


def episodes_with_latents(model, params) -> tuple[EpisodeBatch, list[Episode]]:
    """One task's episodes as the trainer holds them (padded ``[1, E, T]``) and as the
    device records them (real steps only), actions drawn given each episode's latent."""
    gen = torch.Generator().manual_seed(1)
    obs = torch.randn(1, EPISODES, HORIZON, OBS_DIM, generator=gen)
    angle = torch.rand(1, EPISODES, HORIZON, generator=gen) * 2 * math.pi
    obs[..., -2], obs[..., -1] = torch.cos(angle), torch.sin(angle)  # the yaw's cos, sin
    act = torch.randn(1, EPISODES, HORIZON, ACT_DIM, generator=gen)
    mask = torch.zeros(1, EPISODES, HORIZON)
    for e, length in enumerate(LENGTHS):
        mask[0, e, :length] = 1.0
    rew = torch.randn(1, EPISODES, HORIZON, generator=gen) * mask
    context = params["context"]
    latent = context + SIGMA * torch.randn(1, EPISODES, 2, generator=gen)
    rows = latent[:, :, None].expand(1, EPISODES, HORIZON, 2)
    logp = log_prob(model, with_latent(params, rows), obs, act)
    batch = EpisodeBatch(obs, act, rew, mask, logp, torch.zeros(1, EPISODES), latent,
                         latent_log_prob(model, context, latent))
    recorded = []
    for e, length in enumerate(LENGTHS):
        recorded.append(Episode(
            obs=list(obs[0, e, :length].numpy()), act=list(act[0, e, :length].numpy()),
            logp=logp[0, e, :length].tolist(), rew=rew[0, e, :length].tolist(),
            latent=latent[0, e].numpy(), latent_logp=float(batch.latent_logp[0, e])))
    return batch, recorded


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_the_device_step_is_the_trainers(latent_bundle, steps):
    """The bundle's adapt graph on the runtime's adaptation data gives the parameters
    :func:`metarobot.algos.maml.adapt` gives on the same episodes (K = 3 runs the one-step
    graph three times, as the runtime does without a K = 3 graph)."""
    model, params, out = latent_bundle
    policy = AdaptivePolicy.load(out)
    batch, recorded = episodes_with_latents(model, params)
    data = adaptation_data(recorded, OBS_DIM, ACT_DIM, policy.bundle.inner)
    assert data["episode"].shape == (EPISODES, sum(LENGTHS))
    flat = policy.bundle.params
    new, _ = policy._inner_steps(flat, data, steps)
    # The trainer's actions' advantages do not move a context-only step: zeros here.
    adapted, _, _ = maml.adapt(model, params, [batch], [torch.zeros_like(batch.rew)],
                               rates(params), steps)
    want = ParamLayout.of(params).flatten({k: v[0] for k, v in adapted.items()})
    np.testing.assert_allclose(new, want.detach().numpy(), rtol=1e-4, atol=1e-5)
    moved = new - flat
    context = policy.bundle.context_slice
    assert np.abs(moved[context]).min() > 1e-3  # the context moved ...
    assert not np.delete(moved, np.arange(context.start, context.stop)).any()  # ... alone
    policy.close()


def test_the_runtime_draws_a_latent_per_episode_and_acts_on_it(latent_bundle):
    model, params, out = latent_bundle
    policy = AdaptivePolicy.load(out, seed=0)
    rng = np.random.default_rng(0)
    context = policy.bundle.context_slice
    latents = []
    for _ in range(EPISODES):
        for t in range(3):
            obs = rng.standard_normal(OBS_DIM).astype(np.float32)
            action = policy.act(obs, deterministic=True)
            # The action is the policy's at the episode's latent (through the graph).
            acting = policy.bundle.params.copy()
            acting[context] = policy._acting[context]
            mean, _ = policy.forward(obs[None], acting)
            np.testing.assert_allclose(action, np.clip(mean[0], -1, 1), rtol=1e-6)
            policy.observe(obs, action, 1.0, False, t == 2)
        latents.append(policy.recorded_episodes()[-1]["latent"])
    # deterministic first acts: every latent is the context itself
    for z in latents:
        np.testing.assert_array_equal(z, policy.bundle.params[context])
    policy.reset_adaptation()
    for _ in range(EPISODES):
        for t in range(3):
            obs = rng.standard_normal(OBS_DIM).astype(np.float32)
            policy.observe(obs, policy.act(obs), float(rng.standard_normal()), False, t == 2)
    drawn = np.stack([e["latent"] for e in policy.recorded_episodes()])
    assert len({tuple(z) for z in drawn}) == EPISODES  # one latent per episode
    assert np.abs(drawn - policy.bundle.params[context]).max() < 6 * SIGMA
    report = policy.adapt(1)
    assert report.accepted and report.applied, report.reason
    shift = policy.params[context] - policy.bundle.params[context]
    assert report.kl == pytest.approx(float((shift.astype(np.float64) ** 2).sum())
                                      / (2 * SIGMA ** 2), rel=1e-5)
    policy.close()


def test_the_world_frame_context_is_rotated_by_the_observed_yaw(latent_bundle):
    """``policy.onnx`` reads the context as ``R(yaw)^T context``, as torch does, at yaws
    where the rotation matters (a graph that did not rotate would differ)."""
    model, params, out = latent_bundle
    policy = AdaptivePolicy.load(out)
    yaw = np.array([0.0, math.pi / 2, 2.0, -2.5])
    obs = np.zeros((len(yaw), OBS_DIM), dtype=np.float32)
    obs[:, -2], obs[:, -1] = np.cos(yaw), np.sin(yaw)
    flat = policy.bundle.params.copy()
    flat[policy.bundle.context_slice] = (1.0, -0.5)
    got, _ = policy.forward(obs, flat)
    world = {**params, "context": torch.tensor([1.0, -0.5])}
    with torch.no_grad():
        want, _ = policy_forward(model, world, torch.from_numpy(obs))
        model.rotate_context = False
        unrotated, _ = policy_forward(model, world, torch.from_numpy(obs))
        model.rotate_context = True
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[0], unrotated[0].numpy(), rtol=1e-5, atol=1e-6)  # yaw 0
    assert np.abs(got[1:] - unrotated[1:].numpy()).min(1).max() > 1e-3
    policy.close()


def test_a_latent_bundle_adapts_its_context_alone(tmp_path):
    model, params = make_policy()
    with pytest.raises(ValueError, match="context alone.*log_std"):
        export(model, params, tmp_path / "b", lr=rates(params, context_only=False))
    with pytest.raises(ValueError, match="per-parameter"):
        export(model, params, tmp_path / "b", lr=0.1)
    assert not (tmp_path / "b").exists()
    base = {"loss": "lvc", "lr": 0.1, "clip": 1.0, "steps": 1, "gamma": 0.99, "lam": 0.95,
            "baseline": "linear_feature"}
    with pytest.raises(BundleError, match="per-parameter"):
        InnerSpec.from_dict({**base, "latent_std": 0.4})
    with pytest.raises(BundleError, match="latent_std"):
        InnerSpec.from_dict({**base, "latent_std": -1.0})
    per_parameter = {"kind": "per_parameter", "file": "lr.npy", "sha256": "0" * 64}
    with pytest.raises(BundleError, match="lvc"):
        InnerSpec.from_dict({**base, "lr": per_parameter, "loss": "dynamics",
                             "latent_std": 0.4})
    spec = InnerSpec.from_dict({**base, "lr": per_parameter, "latent_std": 0.4})
    assert InnerSpec.from_dict(spec.to_dict()) == spec
    assert "latent_std" not in InnerSpec.from_dict(base).to_dict()  # older bundles unchanged
    # The loader's check (the exporter's is the same function).
    layout = Layout(("w", "context", "log_std"), ((3,), (2,), (2,)), (0, 3, 5), 7)
    check_context_only_rates(np.array([0, 0, 0, 0.3, 0.7, 0, 0], np.float32), layout)
    with pytest.raises(BundleError, match=r"moves \['w', 'log_std'\]"):
        check_context_only_rates(np.array([0, 1, 0, 0.3, 0.7, 0, 1], np.float32), layout)
    with pytest.raises(BundleError, match="no 'context' parameter"):
        check_context_only_rates(np.zeros(3, np.float32), Layout(("w",), ((3,),), (0,), 3))


def test_the_adapt_graph_signature_names_the_latent_inputs(latent_bundle):
    _, _, out = latent_bundle
    names = [i.name for i in open_session(out / "adapt.onnx").get_inputs()]
    assert names[-4:] == ["latent", "latent_old_logp", "latent_adv", "episode"]
