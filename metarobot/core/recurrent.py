"""Gaussian GRU policy for RL2, used as a pure function of an explicit parameter dict.

RL2 (Duan et al. 2016) adapts by memory: the policy is recurrent, and its input at step
``t`` of a *trial* (E consecutive episodes of one task) is the observation together with
the previous step's action, reward and a flag that the previous step ended an episode::

    x_t = [normalize(obs_t), a_{t-1}, norm_r(r_{t-1}), d_{t-1}] ([O + A + 2])
    e_t = tanh MLP(x_t)                                       (policy.hidden[:-1])
    h_t = GRU(e_t, h_{t-1})                                   (H = policy.hidden[-1])
    mean_t = W h_t + b,  log_std (state independent, clamped to [-5, 2])

The hidden state starts at 0 at the beginning of a trial and is carried across the
episode boundaries inside it, so what the policy learned about the task in episode 1 can
change how it acts in episode 2. ``a_{t-1}``, ``r_{t-1}``, ``d_{t-1}`` are 0 at the first
step of a trial; ``d = 1`` on the first step of every later episode. ``norm_r`` is the
identity unless the trainer sets a reward normaliser (``policy.reward_norm``).

The GRU equations are written out (:func:`gru_cell`, the same numbers as
:class:`torch.nn.GRUCell`) so the exported ONNX graph holds plain MatMul / Sigmoid / Tanh
operators, and every function here takes the parameters as a dict, like
:mod:`metarobot.core.policy`. One step (:func:`recurrent_step`) is the sampler's and the
export's definition; the training forward over whole trials (:func:`recurrent_sequence`)
computes the same numbers with one embedding call, torch's fused GRU kernel per
truncated-BPTT chunk and one mean-head call (:func:`recurrent_sequence_steps` is the
step-by-step reference).

Shapes: ``obs [..., O]``, ``prev_act [..., A]``, ``prev_rew``, ``prev_done`` ``[...]``,
``h [..., H]``; sequences put time second to last: ``[..., L, O]`` etc.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metarobot.core.policy import LOG_STD_MAX, LOG_STD_MIN, OBS_CLIP, GaussianMLPPolicy, Params

#: ``policy.kind`` values: the MLP of the gradient meta-learners, the GRU of RL2.
POLICY_KINDS = ("mlp", "gru")


def gru_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor,
             b_hh: Tensor) -> Tensor:
    """One GRU step, :class:`torch.nn.GRUCell`'s equations and parameter layout
    (gates ``r, z, n`` stacked in ``w_ih [3H, I]``, ``w_hh [3H, H]``)::

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h

    ``x [..., I]``, ``h [..., H]`` -> ``h' [..., H]``, always within ``(-1, 1)`` when
    ``h`` is.
    """
    gi = nn.functional.linear(x, w_ih, b_ih)
    gh = nn.functional.linear(h, w_hh, b_hh)
    i_r, i_z, i_n = gi.chunk(3, -1)
    h_r, h_z, h_n = gh.chunk(3, -1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1.0 - z) * n + z * h


class RecurrentStep(NamedTuple):
    """Outputs of one step: ``mean [..., A]``, ``log_std [..., A]``, the new ``h [..., H]``."""

    mean: Tensor
    log_std: Tensor
    h: Tensor


class GaussianGRUPolicy(nn.Module):
    """``a_t ~ N(mean(h_t), exp(log_std)^2)`` with ``h_t`` a GRU over the trial so far.

    The observation normaliser is a pair of buffers (``obs_mean``, ``obs_var``), as in
    :class:`~metarobot.core.policy.GaussianMLPPolicy`; the reward input's is another
    (``rew_mean``, ``rew_var`` ``[1]``; 0 and 1, the identity, unless set). Actions enter raw.

    Args:
        obs_dim: observation size O.
        act_dim: action size A.
        hidden: ``[*embedding widths, H]``: tanh layers applied to the step input, then a
            GRU of H units (``[64]``: the GRU alone).
        init_log_std: initial log standard deviation of every action dimension.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (64, 64),
                 init_log_std: float = 0.0) -> None:
        super().__init__()
        if len(hidden) < 1:
            raise ValueError("a GRU policy needs at least one width (the GRU's)")
        self.obs_dim, self.act_dim, self.hidden = int(obs_dim), int(act_dim), tuple(hidden)
        self.hidden_size = int(hidden[-1])
        self.input_dim = self.obs_dim + self.act_dim + 2
        self.context_dim = 0  # as GaussianMLPPolicy's attribute: no context input
        self.context_noise = 0.0  # nor a per-episode latent
        self.rotate_context = False  # nor a world-frame context
        layers: list[nn.Module] = []
        width = self.input_dim
        for h in self.hidden[:-1]:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        self.embed = nn.Sequential(*layers)
        self.gru = nn.GRUCell(width, self.hidden_size)
        self.mean_head = nn.Linear(self.hidden_size, self.act_dim)
        nn.init.orthogonal_(self.mean_head.weight, gain=0.01)
        nn.init.zeros_(self.mean_head.bias)
        self.log_std = nn.Parameter(torch.full((self.act_dim,), float(init_log_std)))
        self.register_buffer("obs_mean", torch.zeros(self.obs_dim))
        self.register_buffer("obs_var", torch.ones(self.obs_dim))
        self.register_buffer("rew_mean", torch.zeros(1))
        self.register_buffer("rew_var", torch.ones(1))

    def normalize(self, obs: Tensor) -> Tensor:
        return ((obs - self.obs_mean) / torch.sqrt(self.obs_var + 1e-8)).clamp(-OBS_CLIP, OBS_CLIP)

    def step_input(self, obs: Tensor, prev_act: Tensor, prev_rew: Tensor,
                   prev_done: Tensor) -> Tensor:
        """``x_t = [normalize(obs), a_{t-1}, r_{t-1}, d_{t-1}]``: ``[..., O + A + 2]`` for
        any leading shape (one step ``[...]`` or a sequence ``[..., L]``)."""
        rew = (prev_rew.unsqueeze(-1) - self.rew_mean) / torch.sqrt(self.rew_var + 1e-8)
        return torch.cat([self.normalize(obs), prev_act, rew, prev_done.unsqueeze(-1)], -1)

    def forward(self, obs: Tensor, prev_act: Tensor, prev_rew: Tensor, prev_done: Tensor,
                h: Tensor) -> RecurrentStep:
        """One step (see the module docstring); call it through :func:`recurrent_step`."""
        x = self.embed(self.step_input(obs, prev_act, prev_rew, prev_done))
        h = gru_cell(x, h, self.gru.weight_ih, self.gru.weight_hh, self.gru.bias_ih,
                     self.gru.bias_hh)
        mean = self.mean_head(h)
        log_std = self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).expand_as(mean)
        return RecurrentStep(mean, log_std, h)

    def initial_state(self, batch: int | Sequence[int] = ()) -> Tensor:
        """The state at the start of a trial: zeros ``[*batch, H]`` on the model's device."""
        shape = (batch,) if isinstance(batch, int) else tuple(batch)
        return torch.zeros(*shape, self.hidden_size, device=self.obs_mean.device)

    def set_normalizer(self, mean: Tensor, var: Tensor) -> None:
        self.obs_mean.copy_(mean)
        self.obs_var.copy_(var)

    def set_reward_normalizer(self, mean: Tensor, var: Tensor) -> None:
        """Standardise the reward input by ``mean``, ``var`` (``[1]``; ``policy.reward_norm``)."""
        self.rew_mean.copy_(mean)
        self.rew_var.copy_(var)

    def init_params(self) -> Params:
        """A fresh copy of the module's parameters as a dict (leaf tensors)."""
        return {k: v.detach().clone().requires_grad_(True) for k, v in self.named_parameters()}


def recurrent_step(model: GaussianGRUPolicy, params: Params, obs: Tensor, prev_act: Tensor,
                   prev_rew: Tensor, prev_done: Tensor, h: Tensor) -> RecurrentStep:
    """``model`` evaluated with ``params``: one step for a batch ``[...]`` of trials."""
    return functional_call(model, params, (obs, prev_act, prev_rew, prev_done, h))


class TrialInputs(NamedTuple):
    """A trial's step inputs, time second to last: ``obs [..., L, O]``, ``prev_act
    [..., L, A]``, ``prev_rew``, ``prev_done``, ``mask`` ``[..., L]`` (1.0 on real steps;
    padding keeps the hidden state unchanged)."""

    obs: Tensor
    prev_act: Tensor
    prev_rew: Tensor
    prev_done: Tensor
    mask: Tensor


def recurrent_sequence(model: GaussianGRUPolicy, params: Params, inputs: TrialInputs,
                       h0: Tensor, tbptt: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Run the policy over sequences ``[..., L]`` from ``h0 [..., H]``, fused: the same
    numbers as :func:`recurrent_sequence_steps` (to float rounding) at a fraction of the
    cost (the training forward of :func:`metarobot.algos.rl2.ppo_loss`).

    The embedding MLP and the mean head run once over all ``L`` steps; the GRU runs as
    :class:`torch.nn.GRU` (torch's fused kernel, the parameters taken from ``params``'
    ``gru.*`` entries, :class:`torch.nn.GRUCell`'s layout) over chunks of ``tbptt`` steps.

    ``tbptt``: truncated backpropagation through time: the state is detached every
    ``tbptt`` steps (None, or ``>= L``: full backpropagation).

    ``mask [..., L]`` must be 1 on a prefix of each sequence and 0 after it (real steps
    first, then padding, as :func:`metarobot.algos.rl2.pack_trials` lays trials out; a
    sequence may have no real step). Other masks raise ``ValueError``: run them with
    :func:`recurrent_sequence_steps`. ``mean`` at padded steps is unspecified (the GRU
    runs on over the padding; the step-by-step loop holds the state instead), so weight
    any loss by the mask; ``h`` is the loop's.

    Returns:
        ``(mean [..., L, A], log_std [..., L, A], h [..., H])``, ``h`` the state after each
        sequence's last real step (``h0`` if it has none). As in the loop, ``h`` carries
        gradient back to the start of its chunk only if that step lies in the last chunk.
    """
    mask = inputs.mask
    if bool(((mask != 0) & (mask != 1)).any() | (mask[..., 1:] > mask[..., :-1]).any()):
        raise ValueError("recurrent_sequence needs a 0/1 mask with each sequence's real "
                         "steps first and padding only at the end; run other masks with "
                         "recurrent_sequence_steps")
    *batch, length = mask.shape
    hidden = model.hidden_size
    x = model.step_input(inputs.obs, inputs.prev_act, inputs.prev_rew, inputs.prev_done)
    x = functional_call(model.embed, _sub_params(params, "embed."), (x,))
    x = x.reshape(-1, length, x.shape[-1])  # [B, L, I], B = prod(batch)
    real = mask.reshape(-1, length).sum(-1).long()  # [B] real steps of each sequence

    # A GRU with no parameters of its own (meta device): functional_call runs torch's
    # fused kernel with the dict's tensors, so gradients reach them.
    gru = _FunctionalGRU(x.shape[-1], hidden, batch_first=True, device="meta")
    weights = {f"{name}_l0": params[f"gru.{name}"]
               for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    chunk = length if tbptt is None else max(1, min(int(tbptt), length))
    h = h0.expand(*batch, hidden).reshape(-1, hidden)  # [B, H]
    outs = []
    with warnings.catch_warnings():  # cuDNN copies the unpacked weights, on purpose
        warnings.filterwarnings("ignore", "RNN module weights are not part of single")
        for start in range(0, length, chunk):
            if start > 0:
                h = h.detach()  # truncated BPTT
            hs, _ = functional_call(gru, weights, (x[:, start:start + chunk], h[None]))
            outs.append(hs)
            # The state after the last real step of this chunk; padding holds the state.
            n = (real - start).clamp(0, hs.shape[1])  # [B] real steps in this chunk
            index = (n - 1).clamp_min(0)[:, None, None].expand(-1, 1, hidden)
            h = torch.where(n[:, None] > 0, hs.gather(1, index)[:, 0], h)
    hs = torch.cat(outs, 1).reshape(*batch, length, hidden)
    mean = nn.functional.linear(hs, params["mean_head.weight"], params["mean_head.bias"])
    log_std = params["log_std"].clamp(LOG_STD_MIN, LOG_STD_MAX).expand_as(mean)
    return mean, log_std, h.reshape(*batch, hidden)


def recurrent_sequence_steps(model: GaussianGRUPolicy, params: Params, inputs: TrialInputs,
                             h0: Tensor, tbptt: int | None = None,
                             ) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`recurrent_sequence` one :func:`recurrent_step` at a time: the reference, and
    the route for any mask (padded steps anywhere leave the state unchanged). Slow (a
    Python loop over ``L``); same arguments and returns, ``h`` after the last step."""
    length = inputs.obs.shape[-2]
    h, means, log_stds = h0, [], []
    for t in range(length):
        if tbptt is not None and t > 0 and t % tbptt == 0:
            h = h.detach()
        out = recurrent_step(model, params, inputs.obs[..., t, :], inputs.prev_act[..., t, :],
                             inputs.prev_rew[..., t], inputs.prev_done[..., t], h)
        m = inputs.mask[..., t, None]
        h = m * out.h + (1.0 - m) * h
        means.append(out.mean)
        log_stds.append(out.log_std)
    return torch.stack(means, -2), torch.stack(log_stds, -2), h


class _FunctionalGRU(nn.GRU):
    """:class:`torch.nn.GRU` for :func:`torch.func.functional_call` with the caller's
    tensors: it never repacks them (on CUDA, ``flatten_parameters`` moves the weights
    into one cuDNN buffer in place, which would rewrite the storage of ``params``)."""

    def flatten_parameters(self) -> None:
        pass


def _sub_params(params: Params, prefix: str) -> Params:
    """The entries of ``params`` under ``prefix``, renamed for that submodule."""
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def make_policy(kind: str, obs_dim: int, act_dim: int, hidden: Sequence[int],
                init_log_std: float, context_dim: int = 0, dynamics_hidden: Sequence[int] = (),
                context_noise: float = 0.0, rotate_context: bool = False,
                ) -> GaussianMLPPolicy | GaussianGRUPolicy:
    """The policy of ``policy.kind``: an MLP (gradient meta-learners) or a GRU (RL2)."""
    if kind == "mlp":
        return GaussianMLPPolicy(obs_dim, act_dim, hidden, init_log_std, context_dim,
                                 dynamics_hidden, context_noise, rotate_context)
    if kind == "gru":
        if context_dim or dynamics_hidden or context_noise or rotate_context:
            raise ValueError("a GRU policy has no context input or dynamics model "
                             "(policy.context_dim and context_noise must be 0, "
                             "rotate_context false, "
                             "policy.dynamics_hidden empty)")
        return GaussianGRUPolicy(obs_dim, act_dim, hidden, init_log_std)
    raise ValueError(f"unknown policy kind {kind!r}; one of {list(POLICY_KINDS)}")
