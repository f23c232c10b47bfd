"""ES-MAML (Song et al. 2020): the meta-gradient estimated with antithetic perturbations.

Each task of the meta-batch is run twice, with ``theta + sigma * eps_i`` and with
``theta - sigma * eps_i`` (``eps_i ~ N(0, I)``, one draw per task). Each perturbed theta
takes the ordinary inner step on its own pre-update episodes (the same step the device
runs), and its fitness is the mean return of its post-update episodes. The estimate of the
gradient of the post-adaptation return is::

    g = sum_i (u(F_i+) - u(F_i-)) * eps_i / (2 * N * sigma)

with ``u`` the centred ranks of the 2N fitnesses (so the step does not depend on the
returns' scale), and Adam ascends it. Nothing is differentiated through the inner step,
which may therefore be anything the device can run. The 2N perturbed policies are sampled
together, in parallel on the sampler's workers, as 2N tasks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from metarobot.core.policy import ParamLayout, Params


def perturb(params: Params, pairs: int, sigma: float, generator: torch.Generator,
            ) -> tuple[Tensor, Params]:
    """``pairs`` antithetic perturbations of theta.

    Returns:
        ``(eps [N, P], thetas)``: the noise (flat, in :class:`ParamLayout` order) and the
        perturbed parameters stacked ``[2N, ...]``: rows ``0..N-1`` are ``theta + sigma *
        eps_i``, rows ``N..2N-1`` are ``theta - sigma * eps_i``.
    """
    layout = ParamLayout.of(params)
    theta = layout.flatten({k: v.detach() for k, v in params.items()})
    eps = torch.randn((pairs, layout.size), generator=generator,
                      device=generator.device).to(theta)
    return eps, layout.unflatten(torch.cat([theta + sigma * eps, theta - sigma * eps]))


def centered_ranks(fitness: Tensor) -> Tensor:
    """Ranks of ``fitness [K]`` mapped to ``[-0.5, 0.5]`` (ties keep their order)."""
    ranks = torch.empty_like(fitness)
    ranks[fitness.argsort()] = torch.arange(len(fitness), dtype=fitness.dtype,
                                            device=fitness.device)
    return ranks / max(len(fitness) - 1, 1) - 0.5


def gradient_estimate(eps: Tensor, fitness: Tensor, sigma: float, rank: bool = True,
                      ) -> Tensor:
    """The antithetic estimate ``[P]`` of ``grad F(theta)`` from ``eps [N, P]`` and the
    fitness ``[2N]`` of :func:`perturb`'s thetas (centred ranks when ``rank``)."""
    pairs = len(eps)
    if fitness.shape != (2 * pairs,):
        raise ValueError(f"fitness must be [2N] = [{2 * pairs}], got {tuple(fitness.shape)}")
    utility = centered_ranks(fitness) if rank else fitness
    return (utility[:pairs] - utility[pairs:]) @ eps / (2 * pairs * sigma)


def update(params: Params, eps: Tensor, fitness: Tensor, sigma: float,
           apply_step: Callable[[Tensor], bool]) -> dict[str, float]:
    """One Adam step up the estimated gradient (``params`` change in place).

    ``apply_step`` is the trainer's backward-and-step on a loss: it gets the surrogate
    ``-<theta, g>``, whose gradient is ``-g``, so clipping and the non-finite checks are
    those of every other update.
    """
    grad = gradient_estimate(eps, fitness, sigma)
    layout = ParamLayout.of(params)
    loss = -(layout.flatten(params) * grad.detach()).sum()
    apply_step(loss)
    return {"es_fitness_mean": fitness.mean().item(), "es_fitness_std": fitness.std().item(),
            "es_grad_norm": grad.norm().item()}
