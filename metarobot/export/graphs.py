"""The ONNX graphs of a bundle, traced from the trainer's own torch functions.

* ``policy.onnx``: ``obs [B, O]`` (dynamic ``B``) and an optional flat ``params [P]`` ->
  ``action_mean [B, A]`` (unclipped; the runtime samples around it and clips to the action
  bounds) and ``log_std [B, A]`` (the state-independent log-std, clamped to [-5, 2] and
  broadcast over the batch). The observation normaliser is folded into the graph as
  constants. ``params`` is a graph input *with an initializer of the same name* holding the
  meta-learned parameters, so omitting it runs the meta-learned policy.
* ``adapt.onnx`` (one inner step) and ``adapt_kK.onnx`` (``K`` unrolled steps): traced
  from :func:`metarobot.core.inner.inner_steps_flat` (the trainer's own inner step, not a
  re-implementation) with ``make_fx`` and exported with the dynamo exporter. Inputs
  ``params [P], obs [N, O], act [N, A], adv [N], old_logp [N], weight [N]`` (dynamic
  ``N``), ``lr`` (``[]``, or ``[P]`` for Meta-SGD) and ``clip []``; outputs
  ``new_params [P], loss [], approx_kl []`` (loss and KL of the last step, before it).
  With the ``"dynamics"`` inner loss (a context adapted by a dynamics model's error),
  ``weight`` is the transition weight (0 on each episode's last row) and ``adv``, ``clip``
  are unused inputs, kept so that every adapt graph has one signature. A policy with a
  per-episode latent (``policy.context_noise``) has four more inputs, ``latent [E, C],
  latent_old_logp [E], latent_adv [E], episode [E, N]`` (dynamic ``E``), and the step is
  that of :func:`metarobot.core.inner.latent_inner_loss`.

* the recurrent ``policy.onnx`` of a memory (RL2) bundle: ``obs [B, O], prev_action
  [B, A], prev_reward [B], prev_done [B], h_in [B, H]`` and the optional ``params [P]`` ->
  ``action_mean [B, A], log_std [B, A], h_out [B, H]``: one step of
  :func:`metarobot.core.recurrent.recurrent_step`, normaliser folded in.

All are plain inference graphs with standard ``ai.onnx`` operators only
(:func:`check_standard_ops`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import onnx
import torch
from torch import Tensor
from torch.fx.experimental.proxy_tensor import make_fx

from deploy.bundle import (
    ADAPT_INPUTS,
    ADAPT_OUTPUTS,
    LATENT_ADAPT_INPUTS,
    POLICY_INPUTS,
    POLICY_OUTPUTS,
    RECURRENT_POLICY_INPUTS,
    RECURRENT_POLICY_OUTPUTS,
)
from metarobot.core.inner import EpisodeLatents, InnerBatch, InnerLossName, inner_steps_flat
from metarobot.core.policy import GaussianMLPPolicy, ParamLayout, policy_forward
from metarobot.core.recurrent import GaussianGRUPolicy, recurrent_step

#: ONNX opset of the exported graphs (onnxruntime >= 1.14 runs it).
OPSET = 18


def _to_onnx(fn: Callable[..., Any], args: tuple[Tensor, ...], input_names: Sequence[str],
             output_names: Sequence[str], dynamic_shapes: list[dict[int, Any] | None],
             opset: int) -> onnx.ModelProto:
    """Trace ``fn`` to aten ops with ``make_fx`` (this unrolls ``torch.func.grad``), then
    export the traced graph with the dynamo exporter."""
    graph = make_fx(fn, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*args).eval()
    # The exporter logs a warning per torchvision op it cannot register: noise here.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        # The exporter warns about axis renaming and deprecated pytree internals: noise.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(graph, args, dynamo=True, external_data=False,
                                    input_names=list(input_names),
                                    output_names=list(output_names),
                                    dynamic_shapes=dynamic_shapes, opset_version=opset,
                                    verbose=False)
    return program.model_proto


def _free_size(model: GaussianMLPPolicy | GaussianGRUPolicy, layout: ParamLayout) -> int:
    """An example size for the dynamic batch dim equal to no other dim of the model:
    symbolic tracing gives equal sizes one symbol, which would tie B or N to them."""
    return max(model.obs_dim, model.act_dim, layout.size, *model.hidden) + 1


def export_policy_graph(model: GaussianMLPPolicy, layout: ParamLayout, flat: Tensor, *,
                        opset: int = OPSET) -> onnx.ModelProto:
    """The policy graph: ``obs [B, O], params [P] -> action_mean [B, A], log_std [B, A]``.

    ``params`` gets ``flat`` (the meta-learned parameters, float32 ``[P]``) as its default
    initializer. The model's normaliser buffers are folded in as constants.
    """
    def forward(obs: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return policy_forward(model, layout.unflatten(params), obs)

    flat = flat.detach().to(torch.float32).contiguous()
    example_obs = torch.zeros(_free_size(model, layout), model.obs_dim)
    proto = _to_onnx(forward, (example_obs, flat), POLICY_INPUTS, POLICY_OUTPUTS,
                     [{0: torch.export.Dim("B")}, None], opset)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(flat.numpy(), name="params"))
    return proto


def export_recurrent_policy_graph(model: GaussianGRUPolicy, layout: ParamLayout, flat: Tensor,
                                  *, opset: int = OPSET) -> onnx.ModelProto:
    """The recurrent policy graph (one step; see the module docstring), ``params``
    defaulting to ``flat`` like :func:`export_policy_graph`'s."""
    def forward(obs: Tensor, prev_action: Tensor, prev_reward: Tensor, prev_done: Tensor,
                h_in: Tensor, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(recurrent_step(model, layout.unflatten(params), obs, prev_action,
                                    prev_reward, prev_done, h_in))

    flat = flat.detach().to(torch.float32).contiguous()
    b = _free_size(model, layout)
    args = (torch.zeros(b, model.obs_dim), torch.zeros(b, model.act_dim), torch.zeros(b),
            torch.zeros(b), torch.zeros(b, model.hidden_size), flat)
    dim_b = torch.export.Dim("B")
    proto = _to_onnx(forward, args, RECURRENT_POLICY_INPUTS, RECURRENT_POLICY_OUTPUTS,
                     [{0: dim_b}] * 5 + [None], opset)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(flat.numpy(), name="params"))
    return proto


def export_adapt_graph(model: GaussianMLPPolicy, layout: ParamLayout, *, steps: int,
                       per_parameter_lr: bool, loss: InnerLossName = "lvc", opset: int = OPSET,
                       dtype: torch.dtype = torch.float32) -> onnx.ModelProto:
    """The adapt graph of ``steps`` unrolled :func:`inner_steps_flat` steps (dynamic N)
    with the inner ``loss`` (``"lvc"`` or ``"dynamics"``; the inputs are the same), and
    the latent inputs (dynamic E) for a model with ``context_noise``.

    ``dtype`` is the dtype of every input and output; the model must already be in it
    (``float64`` exists for gradient checks; bundles are float32).
    """
    latent = bool(model.context_noise)

    def adapt(params: Tensor, obs: Tensor, act: Tensor, adv: Tensor, old_logp: Tensor,
              weight: Tensor, lr: Tensor, clip: Tensor, *latent_inputs: Tensor,
              ) -> tuple[Tensor, Tensor, Tensor]:
        latents = EpisodeLatents(*latent_inputs) if latent_inputs else None
        return inner_steps_flat(model, layout, params, InnerBatch(obs, act, adv, old_logp, weight),
                                lr, clip, steps, loss, latents)

    n = _free_size(model, layout)
    opts = {"dtype": dtype}
    lr = torch.full((layout.size,), 0.1, **opts) if per_parameter_lr else torch.tensor(0.1, **opts)
    args = (torch.zeros(layout.size, **opts), torch.zeros(n, model.obs_dim, **opts),
            torch.zeros(n, model.act_dim, **opts), torch.ones(n, **opts), torch.zeros(n, **opts),
            torch.ones(n, **opts), lr, torch.tensor(0.2, **opts))
    dim_n = torch.export.Dim("N")
    names, shapes = list(ADAPT_INPUTS), [None, {0: dim_n}, {0: dim_n}, {0: dim_n}, {0: dim_n},
                                         {0: dim_n}, None, None]
    if latent:
        e, dim_e = n + 1, torch.export.Dim("E")
        args += (torch.zeros(e, model.context_dim, **opts), torch.zeros(e, **opts),
                 torch.ones(e, **opts), torch.ones(e, n, **opts))
        names += LATENT_ADAPT_INPUTS
        shapes += [{0: dim_e}, {0: dim_e}, {0: dim_e}, {0: dim_e, 1: dim_n}]
    return _to_onnx(adapt, args, names, ADAPT_OUTPUTS, shapes, opset)


def check_standard_ops(proto: onnx.ModelProto, name: str) -> None:
    """Only standard ai.onnx operators (no contrib, training or custom domains)."""
    def nodes(graph: onnx.GraphProto) -> Any:
        for node in graph.node:
            yield node
            for attr in node.attribute:
                for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    yield from nodes(sub)

    all_nodes = list(nodes(proto.graph)) + [n for f in proto.functions for n in f.node]
    bad = sorted({f"{n.domain}::{n.op_type}" for n in all_nodes
                  if n.domain not in ("", "ai.onnx")})
    if bad:
        raise RuntimeError(f"{name} uses non-standard operators {bad}")
