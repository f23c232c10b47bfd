"""Device adaptation that holds in float32 and never leaves the robot worse off.

Float32 checks (values validated after the cast to the graphs' dtype; one bad episode is
dropped without blocking later ones), the trust region (the step is halved until its KL
is within ``max_kl``) and the trial of an applied update (kept only if it does not do
worse than the parameters before it, else rolled back).
"""

from __future__ import annotations

import contextlib
import math

import gymnasium
import numpy as np
import pytest
import torch

from deploy import AdaptivePolicy, SafetyConfig
from deploy.runtime import standard_error
from metarobot.core.policy import GaussianMLPPolicy
from metarobot.export.bundle import export_bundle

OBS_DIM, ACT_DIM, LENGTH = 5, 2, 10


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A small bundle (one adapt graph) whose default safety rules come from export."""
    gen = torch.Generator().manual_seed(0)
    model = GaussianMLPPolicy(OBS_DIM, ACT_DIM, (8,), init_log_std=0.0)
    params = {k: (v + 0.1 * torch.randn(v.shape, generator=gen)).detach()
              for k, v in model.init_params().items()}
    return export_bundle(
        model.eval(), params, tmp_path_factory.mktemp("safety") / "bundle", family="reach",
        env_id="sim_envs/Reach-v0",
        observation_space=gymnasium.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32),
        action_space=gymnasium.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32),
        inner_config={"loss": "lvc", "lr": 0.5, "clip": math.inf, "steps": 1, "gamma": 0.99,
                      "lam": 0.95, "baseline": "linear_feature"},
        adapt_steps_options=(1,))


def episode(policy, reward=None, seed=0, obs_scale=1.0):
    """One synthetic episode of LENGTH steps; ``reward(obs, action) -> float`` (default:
    reward for pushing the first action up). Returns the episode's return."""
    rng = np.random.default_rng(seed)
    reward = reward or (lambda obs, action: float(action[0] + 0.1 * obs[0]))
    total = 0.0
    for t in range(LENGTH):
        obs = (obs_scale * rng.standard_normal(OBS_DIM)).astype(np.float32)
        action = policy.act(obs)
        r = reward(obs, action)
        policy.observe(obs, action, r, False, t == LENGTH - 1)
        total += r
    return total


def load(bundle, **safety):
    return AdaptivePolicy.load(bundle, seed=0, safety=SafetyConfig(**safety))


# ---------------------------------------------------------------- float32
def test_export_records_the_trial_rules(bundle):
    policy = AdaptivePolicy.load(bundle)
    defaults = SafetyConfig()
    assert policy.bundle.metadata["safety"] == {"trial_episodes": defaults.trial_episodes,
                                                "worse_margin": defaults.worse_margin}
    assert policy.safety.trial_episodes == defaults.trial_episodes
    assert isinstance(policy.safety.trial_episodes, int)


def test_observation_that_overflows_float32_is_refused(bundle):
    policy = load(bundle)
    obs = np.zeros(OBS_DIM, np.float64)
    obs[2] = 1e39  # finite in float64, inf in float32
    assert np.isfinite(obs).all()
    with pytest.raises(ValueError, match=r"NaN or inf \(in float32.*indices \[2\]"):
        policy.act(obs)
    obs[2] = -3.5e38
    with pytest.raises(ValueError, match=r"indices \[2\]"):
        policy.act(obs)
    obs[2] = 3e38  # the largest float32 is 3.4e38: accepted
    assert np.isfinite(policy.act(obs)).all()


def test_reward_that_overflows_float32_drops_only_its_episode(bundle):
    """The issue's failure: a reward of 1e39 was stored as inf and blocked every later
    adaptation until reset_adaptation(). Now its episode is dropped, and adaptation on
    the later good episodes goes ahead."""
    policy = load(bundle, trial_episodes=0)
    with pytest.raises(ValueError, match="finite in float32.*not be used for adaptation"):
        episode(policy, reward=lambda obs, action: 1e39, seed=1)
    # The refusal came at the first step; the robot carries on with the next one.
    for t in range(1, LENGTH):
        obs = np.ones(OBS_DIM, np.float32)
        policy.observe(obs, policy.act(obs), 1.0, False, t == LENGTH - 1)
    assert policy.num_episodes == 0 and policy.dropped_episodes == 1
    episode(policy, seed=2)
    episode(policy, seed=3)
    assert policy.num_episodes == 2
    before = policy.params
    report = policy.adapt()
    assert report.accepted and report.applied and report.episodes == 2, report
    assert not np.array_equal(policy.params, before)


def test_refused_reward_at_the_last_step_still_ends_the_episode(bundle):
    policy = load(bundle, trial_episodes=0)
    obs = np.zeros(OBS_DIM, np.float32)
    policy.observe(obs, policy.act(obs), 0.5, False, False)
    with pytest.raises(ValueError, match="float32"):
        policy.observe(obs, policy.act(obs), float("inf"), False, True)
    assert policy.dropped_episodes == 1 and policy.num_episodes == 0
    episode(policy, seed=4)  # a new episode, not glued to the dropped one
    assert [len(e["rew"]) for e in policy.recorded_episodes()] == [LENGTH]


def test_rewards_whose_sum_overflows_float32_drop_the_episode(bundle):
    """Each reward is a finite float32 but the return is not: dropped, not stored."""
    policy = load(bundle, trial_episodes=0)
    episode(policy, reward=lambda obs, action: 3e38, seed=5)
    assert policy.dropped_episodes == 1 and policy.num_episodes == 0
    episode(policy, seed=6)
    assert policy.adapt().accepted


# ---------------------------------------------------------------- trust region
def test_trust_region_scales_the_step_until_its_kl_is_within_max_kl(bundle):
    """Same data three times: a free step, the step under max_kl, and the same bound with
    one halving fewer allowed (which must fail: the line search stops at the first
    scale within the bound)."""
    free, bounded = load(bundle, max_kl=1e3), load(bundle, max_kl=1e-3)
    for policy in (free, bounded):
        for seed in range(3):
            episode(policy, seed=seed)
    base = free.params.astype(np.float64)
    full = free.adapt()
    assert full.accepted and full.backtracks == 0 and full.kl > 1e-3, full
    report = bounded.adapt()
    assert report.accepted and report.backtracks >= 1, report
    assert report.kl <= 1e-3 < full.kl
    assert report.update_scale == 0.5 ** report.backtracks
    assert "halved" in report.reason
    # The bounded step is the free step scaled down, in the same direction.
    np.testing.assert_allclose(bounded.params - base, report.update_scale * (free.params - base),
                               atol=1e-6)
    short = load(bundle, max_kl=1e-3, max_backtracks=report.backtracks - 1)
    for seed in range(3):
        episode(short, seed=seed)
    rejected = short.adapt()
    assert not rejected.accepted and rejected.kl > 1e-3, rejected


def test_without_backtracking_a_step_above_max_kl_is_rejected(bundle):
    policy = load(bundle, max_kl=1e-3, max_backtracks=0)
    episode(policy)
    before = policy.params
    report = policy.adapt()
    assert not report.accepted and "exceeds max_kl" in report.reason
    assert np.array_equal(policy.params, before) and policy.num_episodes == 1


# ---------------------------------------------------------------- trial and roll-back
def adapt_then_trial(bundle, trial_reward, *, before_episodes=3, **safety):
    """Before-episodes with the default reward, one adaptation, then ``trial_episodes``
    episodes whose every step pays ``trial_reward``."""
    policy = load(bundle, max_kl=1e3, **safety)
    before_returns = [episode(policy, seed=s) for s in range(before_episodes)]
    meta = policy.params
    report = policy.adapt()
    assert report.accepted and report.applied, report
    adapted = policy.params
    assert policy.trial_report.state == "on_trial"
    assert policy.trial_report.before_returns == pytest.approx(before_returns)
    return policy, meta, adapted, before_returns


def test_an_update_that_does_worse_is_rolled_back(bundle):
    policy, meta, adapted, _ = adapt_then_trial(bundle, None, trial_episodes=2)
    episode(policy, reward=lambda obs, action: -100.0, seed=10)
    assert policy.trial_report.state == "on_trial"
    assert np.array_equal(policy.params, adapted)  # one of two trial episodes
    rejected = policy.adapt()  # no new update while one is on trial
    assert not rejected.accepted and "on trial (1 of 2" in rejected.reason
    with pytest.warns(RuntimeWarning, match="rolled back"):
        episode(policy, reward=lambda obs, action: -100.0, seed=11)
    trial = policy.trial_report
    assert trial.state == "rolled_back" and trial.trial_returns == (-1000.0, -1000.0)
    assert "below" in trial.reason
    assert np.array_equal(policy.params, meta) and policy.rollbacks == 1
    assert policy.num_episodes == 0  # the trial's data came from the rolled-back update
    episode(policy, seed=12)  # adaptation carries on from the restored parameters
    assert policy.adapt().accepted


def test_an_update_that_does_not_do_worse_is_kept(bundle):
    policy, meta, adapted, _ = adapt_then_trial(bundle, None, trial_episodes=2)
    for seed in (10, 11):
        episode(policy, reward=lambda obs, action: 100.0, seed=seed)
    assert policy.trial_report.state == "kept" and "kept" in policy.trial_report.reason
    assert np.array_equal(policy.params, adapted) and policy.rollbacks == 0
    assert policy.num_episodes == 2  # the trial episodes are the next adaptation's data
    assert policy.adapt().accepted


@pytest.mark.parametrize("offset, state", [(-0.99, "kept"), (-1.01, "rolled_back")])
def test_the_margin_is_worse_margin_standard_errors_of_the_before_returns(
        bundle, offset, state):
    """Trial mean = before mean + offset * margin: kept within the margin, else rolled
    back. The margin is worse_margin (2) x the before-returns' standard error."""
    policy = load(bundle, max_kl=1e3, trial_episodes=1, worse_margin=2.0)
    before = [episode(policy, seed=s) for s in range(4)]
    assert policy.adapt().applied
    margin = 2.0 * float(np.std(before, ddof=1)) / 2.0
    assert margin > 0 and policy.trial_report.margin == pytest.approx(margin)
    assert standard_error(before) == pytest.approx(margin / 2.0)
    target = float(np.mean(before)) + offset * margin
    expect = (pytest.warns(RuntimeWarning, match="rolled back") if state == "rolled_back"
              else contextlib.nullcontext())
    with expect:
        episode(policy, reward=lambda obs, action: target / LENGTH, seed=20)
    assert policy.trial_report.state == state
    assert policy.trial_report.trial_mean == pytest.approx(target)


def test_dropped_episodes_do_not_count_for_the_trial(bundle):
    policy, _, adapted, _ = adapt_then_trial(bundle, None, trial_episodes=1)
    obs = np.zeros(OBS_DIM, np.float32)
    policy.observe(obs, policy.act(obs), -100.0, False, False)
    with pytest.raises(ValueError, match="float32"):
        policy.observe(obs, policy.act(obs), math.nan, False, True)
    assert policy.trial_report.state == "on_trial" and policy.dropped_episodes == 1
    episode(policy, reward=lambda obs, action: 100.0, seed=31)
    assert policy.trial_report.state == "kept"


def test_reset_and_no_trial(bundle):
    policy, meta, _, _ = adapt_then_trial(bundle, None, trial_episodes=3)
    policy.reset_adaptation()
    assert policy.trial_report.state == "cancelled" and np.array_equal(policy.params, meta)
    episode(policy, seed=40)
    assert policy.adapt().applied  # not blocked by the cancelled trial
    untried = load(bundle, trial_episodes=0)
    episode(untried)
    assert untried.adapt().applied and untried.trial_report is None


def test_safety_config_refuses_bad_values():
    for bad in ({"trial_episodes": -1}, {"trial_episodes": 1.5}, {"worse_margin": -0.1},
                {"worse_margin": math.inf}, {"max_kl": math.nan}, {"max_backtracks": -1},
                {"min_episodes": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SafetyConfig(**bad)
