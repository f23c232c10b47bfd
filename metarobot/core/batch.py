"""The episode batch exchanged between the sampler and the algorithm.

All tensors are padded to the environment's maximum episode length ``T``; ``mask`` marks
the real steps. ``M`` tasks x ``E`` episodes per task.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class EpisodeBatch(NamedTuple):
    """Episodes of ``M`` tasks, ``E`` per task, padded to ``T`` steps.

    Attributes:
        obs: ``[M, E, T, O]`` raw (unnormalised) observations.
        act: ``[M, E, T, A]`` actions as sampled (before the env's clipping).
        rew: ``[M, E, T]`` rewards.
        mask: ``[M, E, T]`` 1.0 for real steps, 0.0 for padding after the episode ended.
        logp: ``[M, E, T]`` log-probability of ``act`` under the sampling policy (no grad).
        success: ``[M, E]`` 1.0 where the episode succeeded (``info["success"]``).
        latent: ``[M, E, C]`` each episode's latent input, or None (a policy without
            ``context_noise``; the sampler never sets it, :func:`~metarobot.sampling.
            rollouts.sample_episodes` does).
        latent_logp: ``[M, E]`` its log-density under the sampling context (no grad), or None.
    """

    obs: Tensor
    act: Tensor
    rew: Tensor
    mask: Tensor
    logp: Tensor
    success: Tensor
    latent: Tensor | None = None
    latent_logp: Tensor | None = None

    def tensors(self) -> dict[str, Tensor]:
        """The batch's tensors by field name (the latent fields only where present)."""
        return {name: value for name, value in zip(self._fields, self) if value is not None}

    @property
    def episode_returns(self) -> Tensor:
        """Undiscounted return of every episode, ``[M, E]``."""
        return (self.rew * self.mask).sum(-1)
