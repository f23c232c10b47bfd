"""Gaussian MLP policy used as a pure function of an explicit parameter dict.

The module holds the architecture and the observation normaliser (as buffers); the
trainable parameters travel separately as a ``dict[str, Tensor]`` and are applied with
:func:`torch.func.functional_call`. That is what lets the MAML inner loop produce adapted
parameters per task (and ``vmap`` over tasks) without touching the module.

Shapes: ``obs`` is ``[..., obs_dim]``, actions are ``[..., act_dim]``; log-probabilities
are summed over the action dimension, so they are ``[...]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]

#: Normalised observations are clipped to this many standard deviations.
OBS_CLIP = 10.0
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class GaussianMLPPolicy(nn.Module):
    """``a ~ N(mu(obs), exp(log_std)^2)`` with a tanh MLP mean and a state-independent log-std.

    The observation normaliser (``obs_mean``, ``obs_var``) is a pair of buffers applied
    before the MLP: ``clip((obs - mean) / sqrt(var + 1e-8), -10, 10)``. It is frozen within
    an iteration and updated between iterations by :meth:`set_normalizer`.

    With ``context_dim`` C > 0 the policy also has a parameter ``context`` ``[C]`` (zeros
    at initialisation), appended to the normalised observation as C more inputs of the
    first layer (CAVIA, Zintgraf et al. 2019). An inner step that changes only the context
    (``inner.adapt: context``) adapts C numbers, through directions the outer loop learns.

    With ``context_noise`` sigma > 0 (needs a context) the context is the mean of a
    per-episode latent: each episode's input is ``z = context + sigma * eps``, ``eps ~
    N(0, I)`` drawn once at its start (structured exploration, MAESN, Gupta et al. 2018).
    The pre-update episodes then differ as wholes, and the inner step moves the context
    toward the latents of the episodes that paid (:func:`latent_log_prob`,
    :func:`metarobot.core.inner.latent_loss`).

    With ``rotate_context`` the context is a planar vector in the world frame (C = 2, e.g.
    a velocity command) and the first layer reads it in the robot's yaw-aligned base
    frame, ``R(yaw)^T context``, with ``cos(yaw), sin(yaw)`` the observation's last two
    values (raw). A constant context then asks for the same world direction however the
    robot turns, as a base-frame command that turns with the robot does.

    With ``dynamics_hidden`` (needs a context) it also holds a small dynamics model
    ``dyn``: a tanh MLP ``(normalised obs, action, context) -> normalised next obs -
    normalised obs`` (:func:`dynamics_forward`), the model of the self-supervised inner
    loss ``inner.loss: dynamics``. It is part of theta (the outer loop trains it) and
    shares the policy's context; the policy's outputs never read it.

    Args:
        obs_dim: observation size O.
        act_dim: action size A.
        hidden: hidden layer widths (default two layers of 64).
        init_log_std: initial log standard deviation of every action dimension.
        context_dim: size C of the adaptable context input (0: none).
        dynamics_hidden: hidden widths of the dynamics model (empty: no model).
        context_noise: std sigma of the per-episode latent around the context (0: none).
        rotate_context: read the 2-number context rotated into the base frame by the yaw
            of the observation's last two values ``cos(yaw), sin(yaw)``.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (64, 64),
                 init_log_std: float = 0.0, context_dim: int = 0,
                 dynamics_hidden: Sequence[int] = (), context_noise: float = 0.0,
                 rotate_context: bool = False) -> None:
        super().__init__()
        self.obs_dim, self.act_dim, self.hidden = int(obs_dim), int(act_dim), tuple(hidden)
        self.context_dim = int(context_dim)
        if rotate_context and (self.context_dim != 2 or self.obs_dim < 2 or dynamics_hidden):
            raise ValueError("rotate_context needs a 2-number context, an observation ending "
                             "in cos(yaw), sin(yaw), and no dynamics model")
        self.rotate_context = bool(rotate_context)
        if not (math.isfinite(context_noise) and context_noise >= 0):
            raise ValueError(f"context_noise must be a finite number >= 0, got {context_noise}")
        if context_noise and not self.context_dim:
            raise ValueError("a per-episode latent (context_noise > 0) needs a context input "
                             "(context_dim > 0)")
        self.context_noise = float(context_noise)
        layers: list[nn.Module] = []
        width = self.obs_dim + self.context_dim
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        out = nn.Linear(width, self.act_dim)
        # A small last layer keeps the initial mean near zero (standard for PPO policies).
        nn.init.orthogonal_(out.weight, gain=0.01)
        nn.init.zeros_(out.bias)
        layers.append(out)
        self.mean_net = nn.Sequential(*layers)
        self.log_std = nn.Parameter(torch.full((self.act_dim,), float(init_log_std)))
        if self.context_dim:
            self.context = nn.Parameter(torch.zeros(self.context_dim))
        self.register_buffer("obs_mean", torch.zeros(self.obs_dim))
        self.register_buffer("obs_var", torch.ones(self.obs_dim))
        self.dynamics_hidden = tuple(dynamics_hidden)
        if self.dynamics_hidden:
            # Built last, so a policy without it draws the same initial weights as before.
            if not self.context_dim:
                raise ValueError("a dynamics model needs a context input (context_dim > 0)")
            dyn: list[nn.Module] = []
            width = self.obs_dim + self.act_dim + self.context_dim
            for h in self.dynamics_hidden:
                dyn += [nn.Linear(width, h), nn.Tanh()]
                width = h
            # The default (not a small) last layer: the context's gradient flows through it.
            dyn.append(nn.Linear(width, self.obs_dim))
            self.dyn = nn.Sequential(*dyn)

    def normalize(self, obs: Tensor) -> Tensor:
        return ((obs - self.obs_mean) / torch.sqrt(self.obs_var + 1e-8)).clamp(-OBS_CLIP, OBS_CLIP)

    def net_input(self, obs: Tensor, context: Tensor | None) -> Tensor:
        """The first layer's input ``[..., O + C]``: the normalised observation, then the
        context (``[C]``, or one row per observation ``[..., C]``)."""
        x = self.normalize(obs)
        if not self.context_dim:
            return x
        if context is None:
            raise ValueError("this policy has a context input: pass its 'context' parameter")
        context = context.expand(*x.shape[:-1], self.context_dim)
        if self.rotate_context:  # world frame -> yaw-aligned base frame: R(yaw)^T context
            cos, sin, cx, cy = obs[..., -2], obs[..., -1], context[..., 0], context[..., 1]
            context = torch.stack([cos * cx + sin * cy, cos * cy - sin * cx], -1)
        return torch.cat([x, context], -1)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(mean [..., A], log_std [..., A])`` for raw observations ``[..., O]``."""
        mean = self.mean_net(self.net_input(obs, getattr(self, "context", None)))
        log_std = self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).expand_as(mean)
        return mean, log_std

    def set_normalizer(self, mean: Tensor, var: Tensor) -> None:
        self.obs_mean.copy_(mean)
        self.obs_var.copy_(var)

    def init_params(self) -> Params:
        """A fresh copy of the module's parameters as a dict (leaf tensors)."""
        return {k: v.detach().clone().requires_grad_(True) for k, v in self.named_parameters()}


def policy_forward(model: GaussianMLPPolicy, params: Params, obs: Tensor) -> tuple[Tensor, Tensor]:
    """``model`` evaluated with ``params`` instead of its own parameters."""
    return functional_call(model, params, (obs,))


def rows_policy_forward(model: GaussianMLPPolicy, params: Params, obs: Tensor,
                        index: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """:func:`policy_forward` on a batch of observations ``[N, O]``, written out for this
    architecture: the same numbers at a fraction of the per-call cost of
    ``functional_call`` and ``vmap`` (tens of microseconds, not hundreds), for the
    sampler's many small per-step batches.

    With ``index`` ``[N]``, ``params`` are stacked ``[M, *shape]`` and row ``i`` uses
    ``params[·][index[i]]``: a batched matmul per row, bit-identical to ``vmap`` of
    :func:`policy_forward` over the gathered parameters (and so to any other batch holding
    that row).
    """
    context = params.get("context")
    if context is not None and index is not None:
        context = context.index_select(0, index)
    x = model.net_input(obs, context)
    if index is not None:
        x = x.unsqueeze(1)  # [N, 1, width]: one row per batched matmul
    for name, layer in model.mean_net.named_children():
        if isinstance(layer, nn.Linear):
            weight, bias = params[f"mean_net.{name}.weight"], params[f"mean_net.{name}.bias"]
            if index is None:
                x = nn.functional.linear(x, weight, bias)
            else:
                # index_select: several times cheaper than advanced indexing here.
                x = torch.baddbmm(bias.index_select(0, index).unsqueeze(1), x,
                                  weight.index_select(0, index).transpose(1, 2))
        elif isinstance(layer, nn.Tanh):
            x = torch.tanh(x)
        else:
            raise TypeError(f"rows_policy_forward does not know the layer {layer!r}")
    mean = x if index is None else x.squeeze(1)
    log_std = params["log_std"] if index is None else params["log_std"].index_select(0, index)
    return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).expand_as(mean)


def dynamics_forward(model: GaussianMLPPolicy, params: Params, obs: Tensor, act: Tensor,
                     ) -> Tensor:
    """The dynamics model's predicted change of the normalised observation, ``[N, O]``, for
    raw observations ``[N, O]`` and actions ``[N, A]``, with ``params``' context ``[C]``.

    Normalised observations (the policy's normaliser): every dimension of the target is on
    the same scale, so no dimension dominates the squared error.
    """
    if not model.dynamics_hidden:
        raise ValueError("this policy has no dynamics model (policy.dynamics_hidden is empty)")
    x = model.normalize(obs)
    context = params["context"].expand(*x.shape[:-1], model.context_dim)
    x = torch.cat([x, act, context], -1)
    for name, layer in model.dyn.named_children():
        if isinstance(layer, nn.Linear):
            x = nn.functional.linear(x, params[f"dyn.{name}.weight"], params[f"dyn.{name}.bias"])
        elif isinstance(layer, nn.Tanh):
            x = torch.tanh(x)
        else:
            raise TypeError(f"dynamics_forward does not know the layer {layer!r}")
    return x


def gaussian_log_prob(mean: Tensor, log_std: Tensor, act: Tensor) -> Tensor:
    """Log-density of ``act`` under ``N(mean, exp(log_std)^2)``, summed over the last dim."""
    z = (act - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2.0 * math.pi)).sum(-1)


def gaussian_entropy(log_std: Tensor) -> Tensor:
    """Entropy of a diagonal Gaussian, summed over the last dim."""
    return (log_std + 0.5 * math.log(2.0 * math.pi * math.e)).sum(-1)


def log_prob(model: GaussianMLPPolicy, params: Params, obs: Tensor, act: Tensor) -> Tensor:
    """``log pi_params(act | obs)`` with shape ``obs.shape[:-1]``."""
    mean, log_std = policy_forward(model, params, obs)
    return gaussian_log_prob(mean, log_std, act)


def with_latent(params: Params, latent: Tensor | None) -> Params:
    """``params`` whose context input is ``latent`` (``[..., C]``, one row per observation,
    the sampled per-episode latents: data), or ``params`` itself when ``latent`` is None."""
    return params if latent is None else {**params, "context": latent}


def latent_log_prob(model: GaussianMLPPolicy, context: Tensor, latent: Tensor) -> Tensor:
    """Log-density of latents ``[..., C]`` under ``N(context, context_noise^2 I)`` ``[...]``."""
    log_std = torch.full_like(context, math.log(model.context_noise))
    return gaussian_log_prob(context.expand_as(latent), log_std.expand_as(latent), latent)


def latent_kl(model: GaussianMLPPolicy, old_context: Tensor, context: Tensor) -> Tensor:
    """``KL(N(old_context, sigma^2 I) || N(context, sigma^2 I))`` ``[...]`` of contexts
    ``[..., C]``: ``|context - old_context|^2 / (2 sigma^2)``."""
    return (context - old_context).pow(2).sum(-1) / (2.0 * model.context_noise ** 2)


@dataclass(frozen=True)
class ParamLayout:
    """How a parameter dict maps to one flat vector ``[P]`` (used by export and deploy).

    Attributes:
        names: parameter names, in ``model.named_parameters()`` order.
        shapes: their shapes.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @staticmethod
    def of(params: Params) -> ParamLayout:
        return ParamLayout(tuple(params), tuple(tuple(v.shape) for v in params.values()))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def offsets(self) -> tuple[int, ...]:
        out, total = [], 0
        for size in self.sizes:
            out.append(total)
            total += size
        return tuple(out)

    @property
    def size(self) -> int:
        """Total number of parameters P."""
        return sum(self.sizes)

    def flatten(self, params: Params) -> Tensor:
        """``dict -> [P]`` (in layout order)."""
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: Tensor) -> Params:
        """``[..., P] -> dict`` of ``[..., *shape]`` views with the layout's shapes (leading
        dims kept: a stack of flat vectors gives stacked parameters)."""
        lead = flat.shape[:-1]
        return {n: flat[..., o:o + s].reshape(*lead, *shape) for n, o, s, shape
                in zip(self.names, self.offsets, self.sizes, self.shapes)}

    def to_dict(self) -> dict[str, list]:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes],
                "offsets": list(self.offsets), "size": self.size}
