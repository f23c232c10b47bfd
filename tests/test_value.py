"""The learned value baseline (``advantages.baseline: mlp``)."""

from __future__ import annotations

import pytest
import torch

from metarobot.algos.value import LearnedBaseline


def _batch(gen: torch.Generator, num_tasks: int = 4, episodes: int = 6, horizon: int = 50):
    """Episodes whose reward rate is visible in ``obs[..., 0]`` and whose lengths vary."""
    rate = torch.rand(num_tasks, episodes, 1, generator=gen) + 0.5
    obs = torch.randn(num_tasks, episodes, horizon, 3, generator=gen)
    obs[..., 0] = rate
    rew = rate + 0.05 * torch.randn(num_tasks, episodes, horizon, generator=gen)
    lengths = torch.randint(horizon // 2, horizon + 1, (num_tasks, episodes), generator=gen)
    mask = (torch.arange(horizon) < lengths[..., None]).float()
    return obs, rew * mask, mask


def test_learned_baseline_explains_returns_it_has_not_seen():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    baseline = LearnedBaseline(obs_dim=3, hidden=[32, 32], lr=3e-3, epochs=10,
                               minibatch_size=128)
    mean, var = torch.zeros(3), torch.ones(3)
    evs = []
    for _ in range(30):  # every batch is fresh: the explained variance is out-of-sample
        obs, rew, mask = _batch(gen)
        adv, ev = baseline.advantages(obs, rew, mask, mean, var, gamma=0.99, lam=0.95,
                                      normalize=True)
        evs.append(ev.mean().item())
        assert adv.shape == rew.shape and torch.isfinite(adv).all()
        assert (adv[mask == 0] == 0).all()
    assert evs[0] < 0.3, evs  # an untrained network explains little
    assert sum(evs[-5:]) / 5 > 0.6, evs  # a trained one most of what obs and t determine


def test_learned_baseline_state_round_trips():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2)
    kwargs = dict(obs_dim=3, hidden=[8], lr=1e-3, epochs=2, minibatch_size=64)
    trained, fresh = LearnedBaseline(**kwargs), LearnedBaseline(**kwargs)
    obs, rew, mask = _batch(gen)
    trained.advantages(obs, rew, mask, torch.zeros(3), torch.ones(3), 0.99, 1.0, True)
    fresh.load_state_dict(trained.state_dict())
    for (name, a), b in zip(trained.value_fn.state_dict().items(),
                            fresh.value_fn.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(trained.return_rms.var, fresh.return_rms.var)


@pytest.mark.parametrize("override, message", [
    ("advantages.baseline=value",
     r"advantages.baseline = 'value' is out of range; allowed: one of \['linear', 'mlp'\]"),
    ("advantages.value_epochs=0",
     "advantages.value_epochs = 0 is out of range; allowed: an integer >= 1"),
])
def test_bad_value_baseline_settings_are_named(override, message):
    from metarobot import api

    with pytest.raises(ValueError, match=message):
        api.resolve_config("reach-cpu", overrides=[override])


def test_task_features_let_the_value_network_see_a_hidden_task():
    """Each task's reward rate is hidden from the observation; given the task's features
    (as the trainer passes its parameters), the network explains the returns, and
    without them it cannot."""
    def batch(gen, num_tasks=8, episodes=3, horizon=40):
        rate = torch.rand(num_tasks, generator=gen) * 2 - 1          # the hidden parameter
        obs = torch.randn(num_tasks, episodes, horizon, 3, generator=gen)
        rew = rate[:, None, None] + 0.05 * torch.randn(num_tasks, episodes, horizon,
                                                       generator=gen)
        return obs, rew, torch.ones_like(rew), rate[:, None]

    def late_ev(task_dim):
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(3)
        baseline = LearnedBaseline(obs_dim=3, hidden=[32, 32], lr=3e-3, epochs=10,
                                   minibatch_size=128, task_dim=task_dim)
        evs = []
        for _ in range(30):
            obs, rew, mask, features = batch(gen)
            _, ev = baseline.advantages(obs, rew, mask, torch.zeros(3), torch.ones(3), 0.99,
                                        0.95, True, features if task_dim else None)
            evs.append(ev.mean().item())
        return sum(evs[-5:]) / 5

    with_features, without = late_ev(1), late_ev(0)
    assert with_features > 0.6, with_features
    assert without < 0.2, without


def test_task_features_of_the_wrong_shape_are_refused():
    baseline = LearnedBaseline(obs_dim=3, hidden=[8], lr=1e-3, epochs=1, minibatch_size=64,
                               task_dim=2)
    obs, rew, mask = torch.zeros(4, 2, 5, 3), torch.zeros(4, 2, 5), torch.ones(4, 2, 5)
    for bad in (None, torch.zeros(4, 3), torch.zeros(3, 2)):
        with pytest.raises(ValueError, match="task_features"):
            baseline.advantages(obs, rew, mask, torch.zeros(3), torch.ones(3), 0.99, 1.0,
                                True, bad)
