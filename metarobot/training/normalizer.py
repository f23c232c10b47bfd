"""Running mean and variance of observations (Chan et al.'s parallel update)."""

from __future__ import annotations

import torch
from torch import Tensor


class RunningMeanStd:
    """Mean and variance of every observation seen so far, updated in batches.

    The policy's normaliser is set from it between iterations, so it stays frozen while an
    iteration samples and optimises.
    """

    def __init__(self, dim: int) -> None:
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.var = torch.ones(dim, dtype=torch.float64)
        self.count = 0.0

    def update(self, obs: Tensor, mask: Tensor) -> None:
        """Add the observations ``obs [..., O]`` where ``mask [...]`` is 1."""
        flat = obs.reshape(-1, obs.shape[-1])[mask.reshape(-1) > 0].to(torch.float64).cpu()
        n = float(flat.shape[0])
        if n == 0:
            return
        batch_mean, batch_var = flat.mean(0), flat.var(0, unbiased=False)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * n / total
        self.var = (self.var * self.count + batch_var * n
                    + delta.pow(2) * self.count * n / total) / total
        self.count = total

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], float(state["count"])
