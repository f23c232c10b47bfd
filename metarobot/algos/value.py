"""A learned value baseline for the outer objective (``advantages.baseline: mlp``).

The linear feature baseline (:mod:`metarobot.core.advantages`) is refit per task on the very
episodes it scores; with few episodes and a large observation it fits the returns' noise
as well as their signal. A value network shared by all tasks and trained across
iterations (as SB3's PPO does) scores each batch *before* it has seen it, so it cannot
overfit that batch. The measurements behind this: ``docs/training.md#the-learned-value-baseline``.

Only the outer objective uses it (the post-update data): the inner step keeps the per-task
linear baseline, which the device runtime refits on its own episodes and so needs no model.

Per step the input is the normalised observation (the policy's normaliser, frozen within an
iteration), ``t / 100``, the step index within the episode (episodes are cut at a time
limit without bootstrapping, so a step's value depends on the time left), and, with
``task_dim > 0``, the task's parameters (:meth:`sim_envs.tasks.TaskParams.features`). That
is privileged information, fine for a baseline that exists only in simulation: where the
task is hidden from the policy (walk's direction) a value network that cannot see it
cannot tell a good step on a forward task from the same step on a backward one.

Shapes: ``obs [M, E, T, O]``, ``task_features [M, F]``, ``rew``, ``mask`` and values
``[M, E, T]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from metarobot.core.advantages import (
    TIME_SCALE,
    discounted_returns,
    explained_variance,
    gae,
    normalize_per_task,
)
from metarobot.core.policy import OBS_CLIP
from metarobot.training.normalizer import RunningMeanStd


class ValueFunction(nn.Module):
    """``V(obs, t[, task])``: a tanh MLP on the normalised observation, the time feature
    and, with ``task_dim > 0``, the task's parameter features.

    Args:
        obs_dim: observation size O.
        hidden: hidden layer widths.
        task_dim: task feature size F (0: the network does not see the task).
    """

    def __init__(self, obs_dim: int, hidden: Sequence[int] = (64, 64), task_dim: int = 0,
                 ) -> None:
        super().__init__()
        self.task_dim = int(task_dim)
        layers: list[nn.Module] = []
        width = int(obs_dim) + 1 + self.task_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def inputs(self, obs: Tensor, obs_mean: Tensor, obs_var: Tensor,
               task_features: Tensor | None = None) -> Tensor:
        """``[M, E, T, O] -> [M, E, T, O + 1 + F]``: normalised, clipped obs, ``t / 100``
        and each task's features ``[M, F]`` repeated over its steps."""
        if (task_features is None) != (self.task_dim == 0) or (
                task_features is not None and task_features.shape != (obs.shape[0],
                                                                       self.task_dim)):
            shape = None if task_features is None else tuple(task_features.shape)
            raise ValueError(f"task_features must be [M={obs.shape[0]}, {self.task_dim}] "
                             f"(None when task_dim is 0), got {shape}")
        norm = ((obs - obs_mean) / torch.sqrt(obs_var + 1e-8)).clamp(-OBS_CLIP, OBS_CLIP)
        steps = obs.shape[-2]
        t = (torch.arange(steps, dtype=obs.dtype, device=obs.device) / TIME_SCALE)
        parts = [norm, t[:, None].expand(*obs.shape[:-1], 1)]
        if task_features is not None:
            parts.append(task_features.to(obs)[:, None, None, :].expand(
                *obs.shape[:-1], self.task_dim))
        return torch.cat(parts, dim=-1)

    def forward(self, inputs: Tensor) -> Tensor:
        """Values ``[...]`` of ``inputs [..., O + 1 + F]`` (from :meth:`inputs`)."""
        return self.net(inputs).squeeze(-1)


class LearnedBaseline:
    """A :class:`ValueFunction`, its optimiser and a reward scale: scores a batch, then
    learns from it (:meth:`advantages`).

    Rewards are divided by a running standard deviation of the discounted returns (as SB3's
    ``VecNormalize`` does), so the network's targets are of order 1 on every family.

    Args:
        obs_dim: observation size O.
        hidden: hidden layer widths.
        lr: Adam learning rate.
        epochs: passes over each batch.
        minibatch_size: steps per Adam step.
        device: where the network lives (the trainer's device).
        task_dim: task feature size F (0: the network does not see the task).
    """

    def __init__(self, obs_dim: int, hidden: Sequence[int], lr: float, epochs: int,
                 minibatch_size: int, device: torch.device | str = "cpu",
                 task_dim: int = 0) -> None:
        self.value_fn = ValueFunction(obs_dim, hidden, task_dim).to(device)
        self.optimizer = torch.optim.Adam(self.value_fn.parameters(), lr=lr)
        self.return_rms = RunningMeanStd(1)
        self.epochs, self.minibatch_size = epochs, minibatch_size

    def advantages(self, obs: Tensor, rew: Tensor, mask: Tensor, obs_mean: Tensor,
                   obs_var: Tensor, gamma: float, lam: float, normalize: bool,
                   task_features: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """GAE advantages ``[M, E, T]`` from the values predicted *before* training on this
        batch, then ``epochs`` passes of training on its lambda-returns. ``task_features``
        ``[M, F]`` are required when the network was built with ``task_dim = F > 0``.

        Returns:
            ``(advantages, explained variance [M])``: the advantages normalised per task
            when ``normalize``; the explained variance is out-of-sample (the network had
            not seen the batch), of the scaled discounted returns.
        """
        returns = discounted_returns(rew, mask, gamma)
        self.return_rms.update(returns.unsqueeze(-1), mask)
        scale = float(torch.sqrt(self.return_rms.var + 1e-8))
        scaled_rew = rew / scale
        inputs = self.value_fn.inputs(obs, obs_mean, obs_var, task_features)
        with torch.no_grad():
            values = self.value_fn(inputs) * mask
        adv = gae(scaled_rew, values, mask, gamma, lam)
        ev = explained_variance(returns / scale, values, mask)
        fit_value_function(self.value_fn, self.optimizer, inputs, adv + values, mask,
                           self.epochs, self.minibatch_size)
        if normalize:
            adv = normalize_per_task(adv, mask)
        return adv, ev

    def state_dict(self) -> dict:
        return {"value_fn": self.value_fn.state_dict(), "optimizer": self.optimizer.state_dict(),
                "return_rms": self.return_rms.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.value_fn.load_state_dict(state["value_fn"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.return_rms.load_state_dict(state["return_rms"])


def fit_value_function(value_fn: ValueFunction, optimizer: torch.optim.Optimizer,
                       inputs: Tensor, targets: Tensor, mask: Tensor, epochs: int,
                       minibatch_size: int) -> float:
    """``epochs`` passes of minibatch Adam on the squared error over real steps.

    Minibatches are drawn with torch's global generator (checkpointed by the trainer).

    Returns:
        The mean squared error of the last pass (during its updates).
    """
    flat_x = inputs.reshape(-1, inputs.shape[-1])[mask.reshape(-1) > 0]
    flat_y = targets.reshape(-1)[mask.reshape(-1) > 0].detach()
    last_mse = float("nan")
    for _ in range(epochs):
        order = torch.randperm(flat_x.shape[0]).to(flat_x.device)
        total = 0.0
        for start in range(0, flat_x.shape[0], minibatch_size):
            idx = order[start:start + minibatch_size]
            loss = (value_fn(flat_x[idx]) - flat_y[idx]).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * idx.numel()
        last_mse = total / max(flat_x.shape[0], 1)
    return last_mse
