"""Export a meta-trained policy to a deployable bundle (format: :mod:`deploy.bundle`):
its ONNX graphs (:mod:`metarobot.export.graphs`), flat parameters, metadata and manifest,
written atomically and verified against torch."""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import onnx
import torch
from torch import Tensor

import metarobot
from deploy.advantages import BASELINE_NAME
from deploy.bundle import (
    ADAPT_INPUTS,
    CONTEXT_NAME,
    LATENT_ADAPT_INPUTS,
    LR_NAME,
    MANIFEST_NAME,
    METADATA_KEY,
    PARAMS_NAME,
    POLICY_NAME,
    BundleError,
    BundleMetadata,
    InnerSpec,
    Layout,
    ModelsSpec,
    NormalizerSpec,
    ParamsSpec,
    PerParameterLr,
    RecurrentSpec,
    SafetySpec,
    SpaceSpec,
    adapt_file_name,
    check_context_only_rates,
    dumps_metadata,
    open_session,
    params_sha256,
    read_manifest,
    write_manifest,
)
from deploy.runtime import SafetyConfig
from metarobot.core import inner as inner_module
from metarobot.core.inner import EpisodeLatents, InnerBatch, inner_steps_flat
from metarobot.core.policy import (
    LOG_STD_MAX,
    LOG_STD_MIN,
    OBS_CLIP,
    GaussianMLPPolicy,
    ParamLayout,
    Params,
    latent_log_prob,
    policy_forward,
)
from metarobot.core.recurrent import GaussianGRUPolicy, recurrent_step
from metarobot.export.graphs import (
    OPSET,
    check_standard_ops,
    export_adapt_graph,
    export_policy_graph,
    export_recurrent_policy_graph,
)

# The bundle format names the policy's context parameter as the policy does.
assert CONTEXT_NAME == inner_module.CONTEXT_NAME
MODEL_AUTHOR = "metarobot"
MODEL_LICENSE = "MIT"
#: The keys ``export_bundle``'s ``inner_config`` needs (``baseline`` and ``normalize`` are
#: optional: the device's baseline, and True).
INNER_KEYS = ("loss", "lr", "clip", "steps", "gamma", "lam")
#: Verification tolerance of the exported graphs against torch (float32).
_VERIFY_ATOL = 1e-4
#: Safety rules every bundle records unless the caller sets them: the adapted-update
#: trial (episodes and the "not worse" margin, in standard errors). See docs/deploy.md.
DEFAULT_SAFETY: dict[str, float | int] = {
    "trial_episodes": SafetyConfig.trial_episodes,
    "worse_margin": SafetyConfig.worse_margin,
}
#: Modes of a written bundle: readable by a controller running as another user.
FILE_MODE, DIR_MODE = 0o644, 0o755


def _space_spec(space: gymnasium.spaces.Box, name: str) -> SpaceSpec:
    if not isinstance(space, gymnasium.spaces.Box) or len(space.shape) != 1:
        raise ValueError(f"{name} must be a flat gymnasium Box, got {space!r}")
    return SpaceSpec(tuple(np.asarray(space.low, dtype=np.float64).tolist()),
                     tuple(np.asarray(space.high, dtype=np.float64).tolist()),
                     str(space.dtype))


def _inner_spec(inner_config: Mapping[str, Any], params: Params, layout: ParamLayout,
                latent_std: float | None) -> tuple[InnerSpec, np.ndarray | None]:
    """The bundle's :class:`InnerSpec` from ``export_bundle``'s ``inner_config`` (and the
    policy's per-episode latent std, or None), and the flat Meta-SGD rates (or None).
    Converts the Python values (tensors, numbers); the ranges are checked by
    :meth:`InnerSpec.from_dict`, the loader's own check."""
    missing = [k for k in INNER_KEYS if k not in inner_config]
    if missing:
        raise ValueError(f"inner_config lacks {missing} (needs {list(INNER_KEYS)})")
    lr = inner_config["lr"]
    lr_flat = None
    if isinstance(lr, Mapping):
        if set(lr) != set(params):
            raise ValueError("a per-parameter (Meta-SGD) lr must have exactly the parameter "
                             f"names {list(params)}, got {list(lr)}")
        for name, rate in lr.items():
            shape = tuple(torch.as_tensor(rate).shape)
            if shape != tuple(params[name].shape):
                raise ValueError(f"Meta-SGD lr {name!r} has shape {shape}, the parameter "
                                 f"has {tuple(params[name].shape)}")
        lr_flat = layout.flatten({k: torch.as_tensor(v) for k, v in lr.items()}).detach()
        lr_flat = lr_flat.to(torch.float32).numpy()
        if not np.all(np.isfinite(lr_flat)):
            raise ValueError("the Meta-SGD learning rates contain NaN or inf")
        lr_value: Any = PerParameterLr(LR_NAME, params_sha256(lr_flat)).to_dict()
    else:
        lr_value = float(lr)
        if not (math.isfinite(lr_value) and lr_value > 0):
            raise ValueError(f"inner lr must be a finite positive float, got {lr_value}")
    try:
        spec = InnerSpec.from_dict({
            "loss": inner_config["loss"], "lr": lr_value, "clip": float(inner_config["clip"]),
            "steps": inner_config["steps"], "gamma": float(inner_config["gamma"]),
            "lam": float(inner_config["lam"]),
            "baseline": inner_config.get("baseline", BASELINE_NAME),
            "normalize": bool(inner_config.get("normalize", True)),
            **({} if latent_std is None else {"latent_std": latent_std})})
    except BundleError as err:
        raise ValueError(f"bad inner_config: {err}") from None
    if latent_std is not None:
        assert lr_flat is not None
        try:
            check_context_only_rates(lr_flat, Layout.from_dict(layout.to_dict()))
        except BundleError as err:
            raise ValueError(str(err)) from None
    return spec, lr_flat


def _example_latents(model: GaussianMLPPolicy, flat: Tensor, layout: ParamLayout,
                     gen: torch.Generator) -> EpisodeLatents | None:
    """Latents of 2 episodes over the verification batch's 5 rows (3 and 2 steps) around
    the context of ``flat``, for a model with ``context_noise`` (else None)."""
    if not model.context_noise:
        return None
    context = layout.unflatten(flat)[CONTEXT_NAME]
    value = context + model.context_noise * torch.randn(2, model.context_dim, generator=gen)
    return EpisodeLatents(value, latent_log_prob(model, context, value),
                          torch.tensor([1.0, -1.0]),
                          torch.tensor([[1.0, 1, 1, 0, 0], [0, 0, 0, 1, 1]]))


def _finish(proto: onnx.ModelProto, metadata_json: str, doc: str) -> onnx.ModelProto:
    for key, value in ((METADATA_KEY, metadata_json), ("model_author", MODEL_AUTHOR),
                       ("model_license", MODEL_LICENSE)):
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    proto.doc_string = doc
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _verify(path: Path, feeds: dict[str, np.ndarray], expected: Sequence[Tensor]) -> None:
    """Run the written model with onnxruntime and compare it with torch."""
    session = open_session(path)
    for name, got, want in zip([o.name for o in session.get_outputs()],
                               session.run(None, feeds), expected):
        err = float(np.max(np.abs(got - want.detach().numpy()), initial=0.0))
        if not err <= _VERIFY_ATOL:
            raise RuntimeError(f"exported {path.name} output {name!r} differs from torch by "
                               f"{err:.3g} (> {_VERIFY_ATOL})")


def _describe(path: Path, limit: int = 5) -> str:
    """What a directory holds, for a refusal message: up to ``limit`` entry names."""
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    except OSError as err:
        return f"unreadable: {err.strerror}"
    if not names:
        return "nothing"
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _bundle_files(path: Path) -> set[str]:
    """The names a bundle directory may hold (its manifest and the files it lists).

    Raises:
        BundleError: ``path`` is not a bundle (no manifest of this format).
    """
    return {MANIFEST_NAME, *read_manifest(path)["files"]}


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse an ``out_dir`` the export must not replace.

    A missing or empty directory is fine. A non-empty one is replaced only with
    ``overwrite``, and only if it is a bundle: its manifest says so and it holds nothing
    but the manifest and the files it lists. A run directory, any other folder and a
    bundle to which a user added files are never removed.

    Raises:
        FileExistsError: naming ``out_dir``, what it holds, and ``--overwrite``.
    """
    if not (out_dir.exists() or out_dir.is_symlink()):
        return
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory; choose another "
                              "--out")
    try:
        empty = not any(out_dir.iterdir())
    except OSError as err:
        raise FileExistsError(f"{out_dir} exists and cannot be listed ({err.strerror}); "
                              "choose another --out") from err
    if empty:
        return
    holds = _describe(out_dir)
    if not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty (it holds {holds}); pass "
                              "--overwrite (overwrite=True) to replace a bundle there")
    try:
        allowed = _bundle_files(out_dir)
    except BundleError as err:
        raise FileExistsError(f"--overwrite replaces only a metarobot bundle, and {out_dir} "
                              f"is not one ({err}); it holds {holds}. Nothing was removed; "
                              "choose another --out") from err
    extra = sorted(p.name for p in out_dir.iterdir() if p.name not in allowed or p.is_dir())
    if extra:
        raise FileExistsError(f"--overwrite replaces only a bundle's own files, and {out_dir} "
                              f"also holds {extra[:5]}. Nothing was removed; move them away "
                              "or choose another --out")


def _make_readable(root: Path) -> None:
    """Files 0644 and the directory 0755: a controller running as another user reads
    the bundle (``mkdtemp`` creates 0700)."""
    for path in root.iterdir():
        path.chmod(FILE_MODE)
    root.chmod(DIR_MODE)


def _replace_dir(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Move the finished bundle ``tmp`` to ``out_dir``: renames only, so ``out_dir`` is
    always either the old complete bundle or the new one; the old one is checked again
    (it may have changed during the export) and removed last."""
    if not out_dir.exists():
        tmp.rename(out_dir)
        return
    check_out_dir(out_dir, overwrite)
    old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
    old.rmdir()
    out_dir.rename(old)
    try:
        tmp.rename(out_dir)
    except BaseException:
        old.rename(out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def export_bundle(model: GaussianMLPPolicy | GaussianGRUPolicy, params: Params,
                  out_dir: str | Path, *,
                  family: str, env_id: str, observation_space: gymnasium.spaces.Box,
                  action_space: gymnasium.spaces.Box, inner_config: Mapping[str, Any] | None,
                  adapt_steps_options: Sequence[int] = (1, 2, 3), opset: int = OPSET,
                  overwrite: bool = False, safety: Mapping[str, float] | None = None,
                  env_kwargs: Mapping[str, Any] | None = None) -> Path:
    """Write a deployable bundle (see :mod:`deploy.bundle` for the files and metadata).

    A :class:`~metarobot.core.recurrent.GaussianGRUPolicy` (RL2) gives a memory bundle
    (``adaptation: "memory"``): the recurrent policy graph and no adapt graphs;
    ``inner_config`` and ``adapt_steps_options`` are not used (pass None), and ``safety``
    defaults to no recorded rules.

    Args:
        model: the policy module (architecture and normaliser buffers; its own parameters
            are not used).
        params: the meta-learned parameters (``model.named_parameters()`` names/shapes).
        out_dir: the bundle directory; it must not exist or be empty unless ``overwrite``.
        family: task family name (e.g. ``"reach"``); env_id: its gymnasium id.
        observation_space, action_space: flat ``Box`` spaces of the env (``[O]``, ``[A]``);
            the runtime clips actions to ``action_space``.
        inner_config: ``loss`` (``"lvc"`` or ``"dynamics"``, the loss of the adapt graph),
            ``lr`` (float, or a dict of per-parameter tensors for Meta-SGD), ``clip``
            (float, ``inf`` = none), ``steps`` (int), ``gamma``, ``lam`` (``0 < gamma <= 1``,
            ``0 <= lam <= 1``), optional ``baseline`` (str, default the device's
            :data:`deploy.advantages.BASELINE_NAME`) and ``normalize`` (bool, per-task
            advantage normalisation, default True). Checked as :class:`InnerSpec`.
        adapt_steps_options: unrolled step counts K to export; must include 1.
        opset: ONNX opset.
        overwrite: replace an existing non-empty ``out_dir`` if it is a bundle (its
            manifest says so, and it holds only the files it lists); anything else is
            refused (see :func:`check_out_dir`).
        safety: default safety rules for the runtime (:data:`deploy.bundle.SAFETY_RULES`:
            ``max_kl``, ``max_update_norm``, ``worse_margin``, ``trial_episodes``), e.g.
            ``max_kl`` set from the adaptation KL measured in training; missing keys of
            :data:`DEFAULT_SAFETY` are added. The runtime uses them unless its caller
            passes its own :class:`deploy.SafetyConfig`.
        env_kwargs: the env options the policy was trained with (e.g.
            ``{"gait_generator": True}``, JSON values): a controller must reproduce them
            (the observation layout, a gait generator), and the simulator adapter passes
            them to ``gymnasium.make``.

    Returns:
        The bundle directory (files mode 0644, directory 0755). It is written to a
        temporary sibling and renamed at the end, so a failed export leaves no partial
        bundle (and an existing one untouched).

    Raises:
        FileExistsError: ``out_dir`` may not be replaced (see :func:`check_out_dir`).
        ValueError: bad arguments (names the problem).
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    names = [n for n, _ in model.named_parameters()]
    if list(params) != names:
        raise ValueError(f"params must have the model's parameter names in order {names}, "
                         f"got {list(params)}")
    for name, value in model.named_parameters():
        if tuple(params[name].shape) != tuple(value.shape):
            raise ValueError(f"param {name!r} has shape {tuple(params[name].shape)}, the model "
                             f"expects {tuple(value.shape)}")
    obs_space = _space_spec(observation_space, "observation_space")
    act_space = _space_spec(action_space, "action_space")
    if (obs_space.dim, act_space.dim) != (model.obs_dim, model.act_dim):
        raise ValueError(f"spaces [{obs_space.dim}] / [{act_space.dim}] do not match the "
                         f"policy's obs_dim {model.obs_dim} / act_dim {model.act_dim}")
    memory = isinstance(model, GaussianGRUPolicy)
    options = [] if memory else sorted(set(int(k) for k in adapt_steps_options))
    if not memory and (1 not in options or options[0] < 1):
        raise ValueError(f"adapt_steps_options must be positive and include 1, "
                         f"got {list(adapt_steps_options)}")
    layout = ParamLayout.of(params)
    flat = layout.flatten({k: v.detach() for k, v in params.items()}).to(torch.float32)
    if not torch.all(torch.isfinite(flat)):
        raise ValueError("the meta-learned parameters contain NaN or inf")
    inner: InnerSpec | None = None
    lr_flat: np.ndarray | None = None
    if not memory:
        if inner_config is None:
            raise ValueError("a gradient bundle (an MLP policy) needs inner_config")
        inner, lr_flat = _inner_spec(inner_config, params, layout,
                                     model.context_noise or None)
    try:
        safety_spec = SafetySpec.from_dict({**({} if memory else DEFAULT_SAFETY),
                                            **(safety or {})})
    except BundleError as err:
        raise ValueError(f"bad safety rules: {err}") from None
    policy_spec: dict[str, Any] = {
        "hidden": list(model.hidden), "activation": "tanh",
        "context_dim": model.context_dim, "log_std_bounds": [LOG_STD_MIN, LOG_STD_MAX],
        "action_mean": "unclipped; the runtime clips actions to action_space"}
    if model.rotate_context:
        policy_spec["context_frame"] = (
            "world: the context is a planar world-frame vector, read in the base frame as "
            "R(yaw)^T context with cos(yaw), sin(yaw) the observation's last two values")
    if isinstance(model, GaussianGRUPolicy):
        policy_spec.update(kind="gru", hidden_size=model.hidden_size, inputs=(
            "obs, and of the previous step: the action as sampled (unclipped), the reward, "
            "1.0 if it ended an episode; all 0 at a task's first step"))

    metadata = BundleMetadata(
        package="metarobot",
        versions={"metarobot": metarobot.__version__, "torch": torch.__version__,
                  "onnx": onnx.__version__, "numpy": np.__version__},
        opset=opset, family=family, env_id=env_id, env_kwargs=dict(env_kwargs or {}),
        observation_space=obs_space, action_space=act_space,
        normalizer=NormalizerSpec(tuple(model.obs_mean.double().tolist()),
                                  tuple(model.obs_var.double().tolist()), 1e-8, OBS_CLIP),
        policy=policy_spec,
        params=ParamsSpec(Layout.from_dict(layout.to_dict()), params_sha256(flat.numpy())),
        inner=inner, safety=safety_spec,
        models=ModelsSpec(POLICY_NAME, {k: adapt_file_name(k) for k in options}),
        adaptation="memory" if memory else "gradient",
        recurrent=RecurrentSpec(model.hidden_size) if memory else None)
    metadata_json = dumps_metadata(metadata.to_dict())

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        files = [POLICY_NAME, PARAMS_NAME]
        np.save(tmp / PARAMS_NAME, flat.numpy().astype("<f4"))
        if lr_flat is not None:
            np.save(tmp / LR_NAME, lr_flat.astype("<f4"))
            files.append(LR_NAME)

        gen = torch.Generator().manual_seed(0)
        obs = torch.randn(5, model.obs_dim, generator=gen)
        with torch.no_grad():
            if isinstance(model, GaussianGRUPolicy):
                policy = export_recurrent_policy_graph(model, layout, flat, opset=opset)
                step_inputs = (obs, torch.randn(5, model.act_dim, generator=gen),
                               torch.randn(5, generator=gen), torch.tensor([0.0, 1, 0, 0, 1]),
                               torch.rand(5, model.hidden_size, generator=gen) * 2 - 1)
                want = recurrent_step(model, layout.unflatten(flat), *step_inputs)
                feeds = dict(zip(("obs", "prev_action", "prev_reward", "prev_done", "h_in"),
                                 (x.numpy() for x in step_inputs)))
            else:
                policy = export_policy_graph(model, layout, flat, opset=opset)
                want = policy_forward(model, layout.unflatten(flat), obs)
                feeds = {"obs": obs.numpy()}
        check_standard_ops(policy, POLICY_NAME)
        onnx.save(_finish(policy, metadata_json, __doc__ or ""), tmp / POLICY_NAME)
        _verify(tmp / POLICY_NAME, feeds, want)

        for steps in options:
            assert inner is not None
            lr_value = (torch.from_numpy(lr_flat) if lr_flat is not None
                        else torch.tensor(inner.lr, dtype=torch.float32))
            name = adapt_file_name(steps)
            proto = export_adapt_graph(model, layout, steps=steps,
                                       per_parameter_lr=lr_flat is not None, loss=inner.loss,
                                       opset=opset)
            check_standard_ops(proto, name)
            onnx.save(_finish(proto, metadata_json, __doc__ or ""), tmp / name)
            files.append(name)
            batch = InnerBatch(obs, torch.randn(5, model.act_dim, generator=gen),
                               torch.randn(5, generator=gen), torch.zeros(5),
                               torch.tensor([1.0, 1, 1, 1, 0]))
            clip = torch.tensor(0.2)
            latents = _example_latents(model, flat, layout, gen)
            want = inner_steps_flat(model, layout, flat, batch, lr_value, clip, steps,
                                    inner.loss, latents)
            feeds = dict(zip(ADAPT_INPUTS + LATENT_ADAPT_INPUTS,
                             (flat, *batch, lr_value, clip, *(latents or ()))))
            _verify(tmp / name, {k: v.numpy() for k, v in feeds.items()}, want)

        write_manifest(tmp, files, metadata.to_dict())
        _make_readable(tmp)
        _replace_dir(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
