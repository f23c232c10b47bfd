"""Linear feature baseline, returns, GAE and normalisation (torch and the numpy twin)."""

import numpy as np
import pytest
import torch

from deploy import advantages as np_adv
from metarobot.core import advantages as adv_mod
from metarobot.core.advantages import compute_advantages


def ragged_data(seed, num_tasks=4, episodes=5, horizon=9, obs_dim=3):
    gen = torch.Generator().manual_seed(seed)
    obs = 3.0 * torch.randn(num_tasks, episodes, horizon, obs_dim, generator=gen,
                            dtype=torch.float64)
    rew = torch.randn(num_tasks, episodes, horizon, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, horizon + 1, (num_tasks, episodes), generator=gen)
    lengths[0, 0], lengths[1, 0] = 1, horizon  # a one-step and a full-length episode
    mask = (torch.arange(horizon) < lengths[..., None]).to(torch.float64)
    return obs, rew, mask


def reference_gae(rew, values, length, gamma, lam):
    """Per-episode GAE written from the definition: A_t = sum_l (gamma lam)^l delta_{t+l}."""
    deltas = [rew[t] + gamma * (values[t + 1] if t + 1 < length else 0.0) - values[t]
              for t in range(length)]
    return [sum((gamma * lam) ** i * deltas[t + i] for i in range(length - t))
            for t in range(length)]


@pytest.mark.parametrize("lam,normalize", [(1.0, True), (0.95, True), (0.9, False)])
def test_numpy_twin_matches_torch(lam, normalize):
    obs, rew, mask = ragged_data(0)
    adv, _ = compute_advantages(obs, rew, mask, gamma=0.97, lam=lam, normalize=normalize)
    for m in range(obs.shape[0]):
        adv_np = np_adv.compute_advantages(obs[m].numpy(), rew[m].numpy(), mask[m].numpy(),
                                           gamma=0.97, lam=lam, normalize=normalize)
        assert adv_np.dtype == np.float64
        np.testing.assert_allclose(adv_np, adv[m].numpy(), rtol=0, atol=1e-6)
    coeffs = adv_mod.fit_linear_baseline(obs, adv_mod.discounted_returns(rew, mask, 0.97), mask)
    coeffs_np = np_adv.fit_linear_baseline(obs[1].numpy(), np_adv.discounted_returns(
        rew[1].numpy(), mask[1].numpy(), 0.97), mask[1].numpy())
    np.testing.assert_allclose(coeffs_np, coeffs[1].numpy(), rtol=1e-6, atol=1e-6)


def test_returns_and_gae_match_the_definition():
    obs, rew, mask = ragged_data(1)
    gamma, lam = 0.9, 0.8
    values = torch.randn(rew.shape, dtype=torch.float64) * mask
    returns = adv_mod.discounted_returns(rew, mask, gamma)
    advantages = adv_mod.gae(rew, values, mask, gamma, lam)
    for m in range(rew.shape[0]):
        for e in range(rew.shape[1]):
            length = int(mask[m, e].sum())
            r = rew[m, e].tolist()
            expected_ret = [sum(gamma ** i * r[t + i] for i in range(length - t))
                            for t in range(length)]
            expected_adv = reference_gae(r, values[m, e].tolist(), length, gamma, lam)
            assert torch.allclose(returns[m, e, :length], torch.tensor(expected_ret,
                                  dtype=torch.float64), atol=1e-12)
            assert torch.allclose(advantages[m, e, :length], torch.tensor(expected_adv,
                                  dtype=torch.float64), atol=1e-12)
            assert (returns[m, e, length:] == 0).all() and (advantages[m, e, length:] == 0).all()
    # lam = 1: advantages are returns minus the baseline.
    assert torch.allclose(adv_mod.gae(rew, values, mask, gamma, 1.0), returns - values,
                          atol=1e-12)


def test_normalised_per_task_over_real_steps():
    obs, rew, mask = ragged_data(2)
    adv, _ = compute_advantages(obs, rew, mask)
    for m in range(obs.shape[0]):
        real = adv[m][mask[m] == 1]
        assert abs(real.mean().item()) < 1e-10
        assert abs(real.std(unbiased=False).item() - 1.0) < 1e-6
    assert (adv[mask == 0] == 0).all()


def test_float32_input_gives_float32_output():
    obs, rew, mask = ragged_data(3)
    adv32, ev32 = compute_advantages(obs.float(), rew.float(), mask.float())
    adv64, _ = compute_advantages(obs, rew, mask)
    assert adv32.dtype == torch.float32 and ev32.dtype == torch.float32
    # Computed in float64 either way: only the float32 rounding of the inputs differs.
    assert torch.allclose(adv32.double(), adv64, atol=1e-4)


def test_baseline_finite_on_degenerate_data():
    num_tasks, episodes, horizon, obs_dim = 5, 3, 6, 2
    obs = torch.zeros(num_tasks, episodes, horizon, obs_dim)
    rew = torch.ones(num_tasks, episodes, horizon)
    mask = torch.ones(num_tasks, episodes, horizon)
    obs[1] = 1.0  # constant non-zero obs with constant returns
    mask[2, :, 1:] = 0  # one-step episodes
    mask[3] = 0
    mask[3, 0, 0] = 1  # a single valid step in the whole task
    mask[4] = 0  # no valid step at all
    adv, ev = compute_advantages(obs, rew, mask)
    coeffs = adv_mod.fit_linear_baseline(obs, adv_mod.discounted_returns(rew, mask, 0.99), mask)
    assert torch.isfinite(adv).all() and torch.isfinite(ev).all() and torch.isfinite(coeffs).all()
    assert (adv[mask == 0] == 0).all()
    for m in range(4):
        adv_np = np_adv.compute_advantages(obs[m].numpy(), rew[m].numpy(), mask[m].numpy(),
                                           0.99, 1.0)
        assert np.isfinite(adv_np).all()
        np.testing.assert_allclose(adv_np, adv[m].numpy(), atol=1e-5)


def test_baseline_falls_back_to_zero_when_no_solve_is_finite():
    obs = torch.randn(2, 2, 4, 3, dtype=torch.float64)
    returns = torch.randn(2, 2, 4, dtype=torch.float64)
    mask = torch.ones(2, 2, 4, dtype=torch.float64)
    returns[0, 0, 0] = float("inf")
    coeffs = adv_mod.fit_linear_baseline(obs, returns, mask)
    assert (coeffs[0] == 0).all()
    assert torch.isfinite(coeffs[1]).all() and (coeffs[1] != 0).any()
    with np.errstate(invalid="ignore", over="ignore"):
        coeffs_np = np_adv.fit_linear_baseline(obs[0].numpy(), returns[0].numpy(),
                                               mask[0].numpy())
    assert (coeffs_np == 0).all()


def test_explained_variance_positive_on_learnable_returns():
    gen = torch.Generator().manual_seed(4)
    num_tasks, episodes, horizon = 3, 8, 60
    # Each episode's reward rate is visible in obs[..., 0]; returns then depend on obs and t.
    rate = torch.rand(num_tasks, episodes, 1, generator=gen, dtype=torch.float64) + 0.5
    obs = torch.randn(num_tasks, episodes, horizon, 2, generator=gen, dtype=torch.float64)
    obs[..., 0] = rate
    rew = rate + 0.05 * torch.randn(num_tasks, episodes, horizon, generator=gen,
                                    dtype=torch.float64)
    lengths = torch.randint(horizon // 2, horizon + 1, (num_tasks, episodes), generator=gen)
    mask = (torch.arange(horizon) < lengths[..., None]).to(torch.float64)
    _, ev = compute_advantages(obs, rew, mask)
    # Ragged lengths make part of the return (the steps left) invisible to the features.
    assert (ev > 0.6).all(), ev
    # Hiding the rate from the observations costs explained variance.
    hidden = obs.clone()
    hidden[..., 0] = 0.0
    _, ev_hidden = compute_advantages(hidden, rew, mask)
    assert (ev_hidden < ev - 0.1).all(), (ev, ev_hidden)


def test_bad_input_raises():
    obs, rew, mask = ragged_data(5)
    with pytest.raises(ValueError, match="disagree"):
        compute_advantages(obs, rew, mask[:, :, :-1])
    with pytest.raises(ValueError, match="mask"):
        compute_advantages(obs, rew, mask * 0.5)
    with pytest.raises(ValueError, match="gamma"):
        compute_advantages(obs, rew, mask, gamma=0.0)
    with pytest.raises(ValueError, match="finite"):
        compute_advantages(obs, rew * float("nan"), mask)
    with pytest.raises(ValueError, match="expected"):
        compute_advantages(obs[0], rew[0], mask[0])
    with pytest.raises(ValueError, match="expected"):
        np_adv.compute_advantages(obs.numpy(), rew.numpy(), mask.numpy(), 0.99, 1.0)
    with pytest.raises(ValueError, match="lam"):
        np_adv.compute_advantages(obs[0].numpy(), rew[0].numpy(), mask[0].numpy(), 0.99, 2.0)


def test_deploy_advantages_does_not_import_torch():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(np_adv))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in getattr(node, "names", [])}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert "torch" not in imported and "metarobot" not in imported
