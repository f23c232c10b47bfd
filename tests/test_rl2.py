"""RL2: the GRU policy's memory, trial sampling, truncated BPTT, config, training, export."""

from __future__ import annotations

import math

import pytest
import torch
from rl2_toy import TWOARM_ID, balanced_tasks
from test_sampler import POINT_ID, point_task

from metarobot import api
from metarobot.algos import rl2
from metarobot.core.policy import gaussian_log_prob
from metarobot.core.recurrent import (
    GaussianGRUPolicy,
    TrialInputs,
    gru_cell,
    recurrent_sequence,
    recurrent_sequence_steps,
)
from metarobot.sampling.sampler import MultiTaskSampler
from metarobot.training.checkpoint import load_checkpoint
from metarobot.training.config import config_from_dict
from metarobot.training.evaluate import evaluate_policy, load_trained_policy
from metarobot.training.trainer import MetaTrainer

RL2 = ["outer.algo=rl2", "policy.kind=gru"]
TINY_RL2 = RL2 + ["policy.hidden=[16]", "meta_batch.tasks=2", "meta_batch.episodes=2",
                  "sampler.num_workers=0", "sampler.envs_per_worker=2", "iterations=2",
                  "checkpoint_every=1", "device=cpu", "outer.epochs=2", "outer.tbptt=40"]


def stacked(params: dict[str, torch.Tensor], num_tasks: int) -> dict[str, torch.Tensor]:
    return {k: v.detach().expand(num_tasks, *v.shape) for k, v in params.items()}


# ----------------------------------------------------------------------------- the policy
def test_gru_cell_is_torchs_gru_cell():
    torch.manual_seed(0)
    cell = torch.nn.GRUCell(5, 7)
    x, h = torch.randn(3, 5), torch.rand(3, 7) * 2 - 1
    got = gru_cell(x, h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    torch.testing.assert_close(got, cell(x, h), atol=1e-6, rtol=0)


def _random_trials(model: GaussianGRUPolicy, batch: int, length: int, seed: int = 0,
                   ) -> tuple[TrialInputs, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    opts = {"generator": g, "dtype": torch.float64}
    mask = torch.ones(batch, length, dtype=torch.float64)
    mask[0, length - 3:] = 0.0  # a shorter trial, padded
    inputs = TrialInputs(torch.randn(batch, length, model.obs_dim, **opts),
                         torch.randn(batch, length, model.act_dim, **opts),
                         torch.randn(batch, length, **opts),
                         (torch.rand(batch, length, **opts) < 0.2).double(), mask)
    return inputs, torch.randn(batch, length, model.act_dim, **opts)


def _reference_full_bptt(model: GaussianGRUPolicy, params, inputs: TrialInputs):
    """The same policy through ``torch.nn.GRU`` (full backpropagation through time)."""
    x = torch.cat([model.normalize(inputs.obs), inputs.prev_act, inputs.prev_rew[..., None],
                   inputs.prev_done[..., None]], -1)
    for i in range(0, len(model.embed), 2):
        x = torch.tanh(torch.nn.functional.linear(x, params[f"embed.{i}.weight"],
                                                  params[f"embed.{i}.bias"]))
    gru = torch.nn.GRU(x.shape[-1], model.hidden_size, batch_first=True).double()
    weights = {"weight_ih_l0": params["gru.weight_ih"], "weight_hh_l0": params["gru.weight_hh"],
               "bias_ih_l0": params["gru.bias_ih"], "bias_hh_l0": params["gru.bias_hh"]}
    hs, _ = torch.func.functional_call(gru, weights, (x,))
    mean = torch.nn.functional.linear(hs, params["mean_head.weight"], params["mean_head.bias"])
    return mean, params["log_std"].expand_as(mean)


def test_truncated_bptt_equals_full_bptt_when_it_covers_the_trial():
    """Gradients of a loss over a whole sequence: TBPTT with a length >= L equals full BPTT
    (``torch.nn.GRU``, an independent implementation) to 1e-6; a shorter one differs."""
    torch.manual_seed(0)
    model = GaussianGRUPolicy(3, 2, hidden=[8, 6]).double()
    params = model.init_params()
    length = 12
    inputs, act = _random_trials(model, 4, length)

    def grads(forward):
        mean, log_std = forward()
        loss = (gaussian_log_prob(mean, log_std, act) * inputs.mask).sum()
        return torch.autograd.grad(loss, list(params.values()))

    h0 = model.initial_state(4).double()
    full = grads(lambda: _reference_full_bptt(model, params, inputs))
    for tbptt in (length, length + 5, None):
        got = grads(lambda k=tbptt: recurrent_sequence(model, params, inputs, h0, k)[:2])
        for name, a, b in zip(params, got, full):
            assert (a - b).abs().max() < 1e-6, (tbptt, name)
    short = grads(lambda: recurrent_sequence(model, params, inputs, h0, 3)[:2])
    diff = max((a - b).abs().max().item() for a, b in zip(short, full))
    assert diff > 1e-4, "truncation at 3 steps must cut gradient paths"


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("tbptt", [4, 7, 17, 30, None])
def test_fused_sequence_equals_the_step_by_step_loop(dtype, tol, tbptt):
    """The fused forward (embedding, torch's GRU kernel per TBPTT chunk, head) against the
    per-step loop: outputs on real steps, the final state after each sequence's last real
    step (padding of different lengths, one sequence all padding, one ending before the
    last chunk) and the gradients of a loss over both w.r.t. every parameter and ``h0``."""
    torch.manual_seed(0)
    model = GaussianGRUPolicy(3, 2, hidden=[8, 6]).to(dtype)
    model.set_normalizer(torch.randn(3, dtype=dtype), torch.rand(3, dtype=dtype) + 0.5)
    params = model.init_params()
    length = 17
    inputs, act = _random_trials(model, 6, length, seed=1)
    real = torch.tensor([17, 14, 9, 1, 0, 16])[:, None]
    mask = (torch.arange(length) < real).double()
    inputs = TrialInputs(*(v.to(dtype) for v in inputs._replace(mask=mask)))
    act = act.to(dtype)
    h0 = (torch.rand(6, model.hidden_size, dtype=dtype) - 0.5).requires_grad_(True)
    w = torch.randn(model.hidden_size, dtype=dtype)

    def run(forward):
        mean, log_std, h = forward(model, params, inputs, h0, tbptt)
        loss = (gaussian_log_prob(mean, log_std, act) * inputs.mask).sum() + (h * w).sum()
        grads = torch.autograd.grad(loss, [*params.values(), h0], allow_unused=True)
        grads = [torch.zeros_like(v) if g is None else g
                 for v, g in zip([*params.values(), h0], grads)]
        return mean * inputs.mask[..., None], log_std, h, grads

    fused, loop = run(recurrent_sequence), run(recurrent_sequence_steps)
    for name, a, b in zip(["mean", "log_std", "h"], fused[:3], loop[:3]):
        assert (a - b).abs().max() < tol, name
    assert torch.equal(fused[2][4], h0[4])  # no real step: the state is h0
    for name, a, b in zip([*params, "h0"], fused[3], loop[3]):
        assert b.abs().max() > 0 or name == "h0", name  # every path is exercised
        assert (a - b).abs().max() < tol, name


def test_fused_sequence_refuses_a_mask_with_holes():
    model = GaussianGRUPolicy(3, 2, hidden=[6]).double()
    inputs, _ = _random_trials(model, 2, 5)
    inputs.mask[1, 2] = 0.0  # real, padding, real
    with pytest.raises(ValueError, match="recurrent_sequence_steps"):
        recurrent_sequence(model, model.init_params(), inputs, model.initial_state(2).double())


def test_trial_sampling_carries_the_state_and_packing_rebuilds_its_inputs():
    """Episodes that end at different steps: the log-probabilities the sampler recorded
    (the state carried across episodes on one slot) equal the policy re-run over the
    packed trials from a zero state; each episode run as a fresh trial (no memory) gives
    the same first episode and different later ones."""
    torch.manual_seed(1)
    model = GaussianGRUPolicy(2, 2, hidden=[16], init_log_std=-0.5)
    params = model.init_params()
    tasks = [point_task(0.5, end_step=5), point_task(-0.5), point_task(0.2, end_step=3)]
    with MultiTaskSampler(POINT_ID, 0, 2) as sampler:
        batch = sampler.sample_trials(model, stacked(params, 3), tasks, 3, seed=3,
                                      generator=torch.Generator().manual_seed(0))
    trials = rl2.pack_trials(batch)
    assert torch.equal(trials.inputs.mask.sum(1), batch.mask.sum((1, 2)))
    assert torch.equal(trials.inputs.prev_done.sum(1), torch.full((3,), 2.0))

    def logp_of(packed: rl2.PackedTrials) -> torch.Tensor:
        with torch.no_grad():
            mean, log_std, _ = recurrent_sequence(model, params, packed.inputs,
                                                  model.initial_state(len(packed.act)))
        return gaussian_log_prob(mean, log_std, packed.act) * packed.inputs.mask

    err = (logp_of(trials) - trials.logp).abs().max().item()
    assert err < 1e-4, err
    for e in range(3):  # episode e alone, from a zero state
        alone = rl2.pack_trials(type(batch)(**{k: x[:, e:e + 1]
                                               for k, x in batch.tensors().items()}))
        gap = (logp_of(alone) - alone.logp).abs().max().item()
        assert (gap < 1e-4) if e == 0 else (gap > 1e-3), (e, gap)


def test_minibatches_step_once_per_share_and_cover_every_trial_each_epoch():
    """Minibatched RL2 update: ``epochs x minibatches`` Adam steps, each epoch's shares a
    partition of the trials; a share's loss is the loss of those trials alone."""
    torch.manual_seed(2)
    model = GaussianGRUPolicy(2, 2, hidden=[16], init_log_std=-0.5)
    params = model.init_params()
    tasks = [point_task(x) for x in (0.5, -0.5, 0.2, -0.1, 0.3)]
    with MultiTaskSampler(POINT_ID, 0, 2) as sampler:
        batch = sampler.sample_trials(model, stacked(params, 5), tasks, 2, seed=3,
                                      generator=torch.Generator().manual_seed(0))
    trials = rl2.pack_trials(batch)
    adv, _ = rl2.trial_advantages(trials, 0.99, 1.0)
    full, _ = rl2.ppo_loss(model, params, trials, adv, 0.2, 8)
    everything = rl2.select(trials, torch.arange(5))
    assert torch.allclose(rl2.ppo_loss(model, params, everything, adv, 0.2, 8)[0], full)
    # Per-trial losses weighted by their steps make up the whole batch's.
    steps = trials.inputs.mask.sum(1)
    parts = [rl2.ppo_loss(model, params, rl2.select(trials, torch.tensor([i])), adv[i:i + 1],
                          0.2, 8)[0] * steps[i] for i in range(5)]
    assert torch.allclose(sum(parts) / steps.sum(), full, atol=1e-6)
    # The entropy bonus: the loss less coef x entropy, whose gradient raises log_std.
    bonus, bonus_stats = rl2.ppo_loss(model, params, trials, adv, 0.2, 8, entropy_coef=0.5)
    assert torch.allclose(bonus, full - 0.5 * bonus_stats["entropy"], atol=1e-6)
    (grad,) = torch.autograd.grad(bonus - full, [params["log_std"]])
    assert (grad < 0).all()

    seen: list[int] = []

    def apply_step(loss: torch.Tensor) -> bool:
        seen.append(int(loss.detach().isfinite()))
        return True

    stats = rl2.update(model, params, trials, adv, epochs=3, clip=0.2, tbptt=8,
                       apply_step=apply_step, minibatches=2,
                       generator=torch.Generator().manual_seed(0))
    first_share = torch.randperm(5, generator=torch.Generator().manual_seed(0))[:3]
    assert seen == [1] * 6 and stats["outer_loss"] == pytest.approx(
        rl2.ppo_loss(model, params, rl2.select(trials, first_share), adv[first_share],
                     0.2, 8)[0].item(), rel=1e-5)

    # A skipped step (non-finite loss or gradient) ends the whole update, as in PPO-MAML.
    calls = []
    rl2.update(model, params, trials, adv, epochs=3, clip=0.2, tbptt=8,
               apply_step=lambda loss: calls.append(loss) or len(calls) != 2, minibatches=2,
               generator=torch.Generator().manual_seed(0))
    assert len(calls) == 2


# ----------------------------------------------------------------------------- memory
def _train_toy(iterations: int, seed: int = 0):
    torch.manual_seed(seed)
    model = GaussianGRUPolicy(1, 1, hidden=[16, 16], init_log_std=0.0)
    params = model.init_params()
    optimizer = torch.optim.Adam(params.values(), lr=0.01)

    def apply_step(loss: torch.Tensor) -> bool:
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
        optimizer.step()
        return True

    generator = torch.Generator().manual_seed(seed)
    with MultiTaskSampler(TWOARM_ID, 0, 16) as sampler:
        def episode_returns() -> torch.Tensor:  # [E] mean over 64 balanced tasks
            batch = sampler.sample_trials(model, stacked(params, 64), balanced_tasks(64), 2,
                                          seed=999, generator=torch.Generator().manual_seed(1))
            return batch.episode_returns.mean(0)

        before = episode_returns()
        for it in range(iterations):
            batch = sampler.sample_trials(model, stacked(params, 16), balanced_tasks(16), 2,
                                          seed=it, generator=generator)
            trials = rl2.pack_trials(batch)
            adv, _ = rl2.trial_advantages(trials, 0.99, 1.0)
            rl2.update(model, params, trials, adv, epochs=4, clip=0.2, tbptt=8,
                       apply_step=apply_step)
        return before, episode_returns()


def test_the_hidden_state_carries_what_the_first_episode_revealed():
    """Two-armed toy: the side of each task shows only in the reward. No policy beats 0 in
    a trial's first episode (the tasks are balanced); after a small seeded training run,
    the second episode, which sees the first through the GRU's state, earns at least
    0.5 more (of at most 1). Untrained, the two episodes are alike."""
    before, after = _train_toy(iterations=40)
    assert abs(before[1] - before[0]) < 0.3, before
    assert abs(after[0]) < 0.2, after  # the first episode cannot know the side
    assert after[1] - after[0] > 0.5, after


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("overrides, key", [
    (["outer.algo=rl2"], "policy.kind"),                      # rl2 needs the GRU policy
    (["policy.kind=gru"], "policy.kind"),                     # the GRU needs rl2
    (RL2 + ["outer.tbptt=0"], "outer.tbptt"),
    (RL2 + ["inner.meta_sgd=true"], "inner.meta_sgd"),
    (RL2 + ["policy.context_dim=4"], "policy.context_dim"),
    (RL2 + ["policy.hidden=[]"], "policy.hidden"),
    (RL2 + ["outer.minibatches=0"], "outer.minibatches"),
    (RL2 + ["outer.minibatches=11"], "outer.minibatches"),    # more than meta_batch.tasks
    (["outer.minibatches=2"], "outer.minibatches"),           # RL2's only
    (["outer.entropy_coef=0.01"], "outer.entropy_coef"),      # RL2's only
    (RL2 + ["outer.entropy_coef=-0.1"], "outer.entropy_coef"),
])
def test_bad_rl2_settings_are_named(overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        api.resolve_config("reach-cpu", overrides=overrides)


def test_good_rl2_config_loads():
    cfg = api.resolve_config("reach-cpu", overrides=RL2 + ["outer.tbptt=25"])
    assert cfg.outer.algo == "rl2" and cfg.policy.kind == "gru" and cfg.outer.tbptt == 25
    assert config_from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("baseline, reward_norm", [("linear", False), ("mlp", True)])
def test_rl2_trains_checkpoints_resumes_and_evaluates_on_reach(tmp_path, baseline, reward_norm):
    tiny = TINY_RL2 + [f"advantages.baseline={baseline}", f"policy.reward_norm={reward_norm}"]
    straight = MetaTrainer(api.resolve_config("reach-cpu", overrides=tiny), tmp_path / "a",
                           progress=False)
    straight.train()
    first = MetaTrainer(api.resolve_config("reach-cpu", overrides=tiny + ["iterations=1"]),
                        tmp_path / "b", progress=False)
    first.train()
    resumed = MetaTrainer.resume(tmp_path / "b", progress=False, iterations=2)
    assert resumed.iteration == 1 and isinstance(resumed.model, GaussianGRUPolicy)
    resumed.train()
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert a["iteration"] == b["iteration"] == 2
    assert "gru.weight_hh" in a["model"]["params"]
    for name, value in a["model"]["params"].items():
        assert torch.equal(value, b["model"]["params"][name]), name
    # The value network (over whole trials) is trained and resumed with the policy.
    values = [c["algo_state"]["value_baseline"] for c in (a, b)]
    assert (values[0] is None) == (baseline == "linear")
    if baseline == "mlp":
        for name, value in values[0]["value_fn"].items():
            assert torch.equal(value, values[1]["value_fn"][name]), name
    # The reward input's normaliser (its resumed state is in the equality above).
    norms = [c["algo_state"]["reward_normalizer"] for c in (a, b)]
    policy = load_trained_policy(tmp_path / "a")
    if reward_norm:
        assert norms[0]["count"] == norms[1]["count"] > 0
        assert torch.equal(norms[0]["mean"], norms[1]["mean"])
        assert float(norms[0]["mean"]) < 0  # reach's rewards are minus a distance
        assert torch.equal(policy.model.rew_mean, norms[0]["mean"].float())
        assert torch.equal(policy.model.rew_var, norms[0]["var"].float())
    else:
        assert norms == [None, None] and float(policy.model.rew_var) == 1.0
    result = evaluate_policy(policy, "test", adapt_steps=2, num_tasks=2, episodes=1)
    assert result.returns.shape == (3, 2) and result.success.shape == (3, 2)
    assert all(math.isfinite(x) for x in result.returns.ravel())
    # Each column is its own block of episodes of the one trial: they differ.
    assert len({round(float(x), 6) for x in result.returns[:, 0]}) == 3
    # `metarobot export` of the run: a memory bundle that acts on the reach env.
    import gymnasium

    from deploy.recurrent import RecurrentPolicy

    bundle = api.export(tmp_path / "a", tmp_path / "bundle")
    policy = RecurrentPolicy.load(bundle, family="reach", seed=0)
    env = gymnasium.make("sim_envs/Reach-v0")
    obs, _ = env.reset(seed=0)
    for _ in range(10):
        action = policy.act(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        policy.observe(obs, action, reward, terminated, truncated)
        obs = next_obs
    env.close()
    assert policy.state_resets == 0 and abs(policy.state).max() > 0


# ----------------------------------------------------------------------------- export
def _export_random_gru(tmp_path, hidden=(32, 24)):
    import gymnasium

    from metarobot.export.bundle import export_bundle

    env = gymnasium.make("sim_envs/Reach-v0")
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    torch.manual_seed(2)
    model = GaussianGRUPolicy(obs_space.shape[0], act_space.shape[0], hidden=hidden,
                              init_log_std=-0.5)
    model.set_normalizer(0.1 * torch.randn(model.obs_dim), 0.5 + torch.rand(model.obs_dim))
    model.set_reward_normalizer(torch.tensor([-0.3]), torch.tensor([0.04]))
    params = {k: (v + 0.3 * torch.randn_like(v)).detach() for k, v in
              model.init_params().items()}
    path = export_bundle(model, params, tmp_path / "bundle", family="reach",
                         env_id="sim_envs/Reach-v0", observation_space=obs_space,
                         action_space=act_space, inner_config=None)
    return model, params, path


def test_exported_recurrent_policy_follows_torch_over_a_whole_trial(tmp_path):
    """A memory bundle run by deploy's RecurrentPolicy (numpy + onnxruntime) acts as the
    torch policy over a trial of 3 episodes of 8 steps, its state carried across them:
    actions and the final state within 1e-5."""
    from deploy.bundle import load_bundle
    from deploy.recurrent import RecurrentPolicy
    from metarobot.core.recurrent import recurrent_step

    model, params, path = _export_random_gru(tmp_path)
    bundle = load_bundle(path, family="reach")
    assert bundle.adaptation == "memory" and bundle.adapt_files == {}
    assert bundle.spec.recurrent.hidden_size == 24
    policy = RecurrentPolicy.load(path, family="reach")
    g = torch.Generator().manual_seed(5)
    low, high = torch.from_numpy(bundle.act_low), torch.from_numpy(bundle.act_high)
    h = model.initial_state(1)
    prev_act, prev_rew, prev_done = torch.zeros(1, model.act_dim), torch.zeros(1), torch.zeros(1)
    worst = 0.0
    for _episode in range(3):
        for t in range(8):
            obs = torch.randn(1, model.obs_dim, generator=g)
            reward = float(torch.randn((), generator=g))
            with torch.no_grad():
                mean, _, h = recurrent_step(model, params, obs, prev_act, prev_rew, prev_done, h)
            action = policy.act(obs[0].numpy(), deterministic=True)
            want = torch.minimum(torch.maximum(mean[0], low), high).numpy()
            worst = max(worst, float(abs(action - want).max()))
            policy.observe(obs[0].numpy(), action, reward, False, t == 7)
            prev_act, prev_rew = mean, torch.tensor([reward])
            prev_done = torch.tensor([1.0 if t == 7 else 0.0])
    assert worst < 1e-5, worst
    assert abs(policy.state - h[0].numpy()).max() < 1e-5
    assert abs(policy.state).max() > 0.05  # the state did move
    policy.reset_task()
    assert not policy.state.any()


def test_recurrent_runtime_resets_a_faulty_state_and_bundles_are_told_apart(tmp_path):
    import dataclasses

    from deploy.bundle import BundleError, BundleMetadata, load_bundle
    from deploy.recurrent import RecurrentPolicy
    from deploy.runtime import AdaptivePolicy

    _, _, path = _export_random_gru(tmp_path, hidden=(8,))
    policy = RecurrentPolicy.load(path, seed=0)
    obs = torch.zeros(policy.obs_dim).numpy()
    fresh = policy.act(obs, deterministic=True)
    policy.reset_task()
    policy._h[:] = float("nan")  # a corrupted state
    with pytest.warns(RuntimeWarning, match="hidden state"):
        again = policy.act(obs, deterministic=True)
    assert policy.state_resets == 1 and "non-finite" in policy.last_reset_reason
    assert (again == fresh).all()
    policy.reset_task()
    policy._h[:] = 50.0  # finite, but no GRU state from a zero start gets there
    with pytest.warns(RuntimeWarning, match="beyond the bound"):
        assert (policy.act(obs, deterministic=True) == fresh).all()
    assert policy.state_resets == 2
    with pytest.raises(ValueError, match="reward"):
        policy.observe(obs, again, float("inf"), False, False)
    # The two kinds of bundle go to their own runtime.
    with pytest.raises(BundleError, match="RecurrentPolicy"):
        AdaptivePolicy.load(path)
    with pytest.raises(BundleError, match="AdaptivePolicy"):
        RecurrentPolicy.load("reach")  # the shipped gradient bundle
    # The one metadata definition refuses a memory bundle with an inner step, or an
    # unknown kind of adaptation.
    metadata = load_bundle(path).metadata
    with pytest.raises(BundleError, match="inner"):
        BundleMetadata.from_dict({**metadata, "inner": {}})
    with pytest.raises(BundleError, match="adaptation"):
        BundleMetadata.from_dict({**metadata, "adaptation": "telepathy"})
    spec = BundleMetadata.from_dict(metadata)
    assert BundleMetadata.from_dict(spec.to_dict()) == spec
    with pytest.raises(BundleError, match="recurrent"):
        dataclasses.replace(spec, recurrent=None)
