"""ES-MAML: the antithetic estimate follows the true meta-gradient, and the trainer runs it."""

from __future__ import annotations

import pytest
import torch

from metarobot.algos import es
from metarobot.core.policy import ParamLayout

DIM, TASKS, LR = 10, 5, 0.1


def _meta_objective(theta: torch.Tensor) -> torch.Tensor:
    """A smooth MAML objective with a known gradient: per task, one gradient step on the
    quadratic ``0.5 |A (x - c_t)|^2`` from ``theta``, then minus that loss (fitness),
    averaged over tasks. ``theta`` is ``[..., DIM]``."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(DIM, DIM, generator=gen, dtype=torch.float64) / DIM ** 0.5
    h = a.T @ a
    centres = torch.randn(TASKS, DIM, generator=gen, dtype=torch.float64)
    diff = theta.unsqueeze(-2) - centres                  # [..., TASKS, DIM]
    adapted = diff - LR * diff @ h                        # after the inner step
    return -0.5 * ((adapted @ a.T) ** 2).sum(-1).mean(-1)


@pytest.mark.parametrize("rank, pairs, threshold", [(False, 2000, 0.95), (True, 2000, 0.9)])
def test_the_estimate_points_along_the_true_meta_gradient(rank, pairs, threshold):
    """Cosine between the antithetic estimate and autograd's gradient of the post-step
    fitness, at a random theta, for ``pairs`` perturbation pairs."""
    theta = torch.randn(DIM, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    theta.requires_grad_(True)
    (true,) = torch.autograd.grad(_meta_objective(theta), theta)
    params = {"theta": theta.detach()}
    eps, thetas = es.perturb(params, pairs, 0.05, torch.Generator().manual_seed(2))
    estimate = es.gradient_estimate(eps, _meta_objective(thetas["theta"]), 0.05, rank=rank)
    cosine = torch.nn.functional.cosine_similarity(estimate, true, dim=0)
    assert cosine > threshold, cosine
    # With few pairs the estimate is noisy, but still better than chance.
    few, few_thetas = es.perturb(params, 20, 0.05, torch.Generator().manual_seed(3))
    noisy = es.gradient_estimate(few, _meta_objective(few_thetas["theta"]), 0.05, rank=rank)
    assert torch.nn.functional.cosine_similarity(noisy, true, dim=0) > 0.3


def test_perturbations_are_antithetic_and_in_layout_order():
    params = {"w": torch.zeros(2, 3), "b": torch.ones(3)}
    eps, thetas = es.perturb(params, 4, 0.5, torch.Generator().manual_seed(0))
    layout = ParamLayout.of(params)
    assert eps.shape == (4, layout.size)
    assert thetas["w"].shape == (8, 2, 3) and thetas["b"].shape == (8, 3)
    flat = torch.stack([layout.flatten({k: v[i] for k, v in thetas.items()}) for i in range(8)])
    theta = layout.flatten(params)
    torch.testing.assert_close(flat[:4], theta + 0.5 * eps)
    torch.testing.assert_close(flat[4:], theta - 0.5 * eps)


def test_centered_ranks():
    ranks = es.centered_ranks(torch.tensor([3.0, -1.0, 10.0, 0.0]))
    torch.testing.assert_close(ranks, torch.tensor([1 / 6, -0.5, 0.5, -1 / 6]))
    with pytest.raises(ValueError, match="fitness"):
        es.gradient_estimate(torch.zeros(3, 2), torch.zeros(5), 0.1)
