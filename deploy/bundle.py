"""The bundle format: constants, hashing, JSON encoding and the validating loader.

A bundle is a directory written by :func:`metarobot.export.export_bundle`::

    policy.onnx      obs[B,O] (+ optional params[P]) -> action_mean[B,A], log_std[B,A]
    adapt.onnx       one inner step:  params, obs, act, adv, old_logp, weight, lr, clip
                                      -> new_params[P], loss[], approx_kl[]
    adapt_kK.onnx    K unrolled inner steps on the same data (K in the bundle's options)
    params.npy       the meta-learned flat parameters, float32 [P]
    lr.npy           (Meta-SGD only) the per-parameter inner learning rates, float32 [P]
    manifest.json    {"format", "format_version", "files": {name: {size, sha256}}, "metadata"}

A policy with a per-episode latent around its context (``inner.latent_std``) acts, each
episode, with the context replaced by a latent the runtime draws, and its adapt graphs
take :data:`LATENT_ADAPT_INPUTS` after ``clip``.

A bundle adapts in one of two ways (``metadata["adaptation"]``, :data:`ADAPTATION_KINDS`;
absent means ``"gradient"``): ``"gradient"`` is the one above (an MLP policy and its
inner step, run by :class:`deploy.runtime.AdaptivePolicy`); ``"memory"`` is RL2's, whose
policy is recurrent and adapts by carrying its state, with no adapt graph and no
``inner`` section (run by :class:`deploy.recurrent.RecurrentPolicy`)::

    policy.onnx      obs[B,O], prev_action[B,A], prev_reward[B], prev_done[B], h_in[B,H]
                     (+ optional params[P])
                     -> action_mean[B,A], log_std[B,A], h_out[B,H]
    params.npy, manifest.json    as above; metadata["recurrent"] = {"hidden_size": H}

Every model carries the same metadata JSON in its ``metadata_props`` under
:data:`METADATA_KEY`. This module is numpy + onnxruntime only (it never imports torch), so
the device runtime and the exporter share one definition of the format.

Floats in the metadata JSON are written with ``repr`` precision (Python's ``json`` does
this), so float32 values round-trip exactly; non-finite floats, which strict JSON cannot
hold, are written as the strings ``"inf"``, ``"-inf"`` and ``"nan"``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from deploy.safety import SAFETY_RANGES, check_rule

FORMAT = "metarobot.bundle"
#: Bumped on any incompatible change of files, graph signatures or metadata keys.
FORMAT_VERSION = 1
#: The ``metadata_props`` key (of every model) that holds the bundle metadata JSON.
METADATA_KEY = "metarobot.bundle"
MANIFEST_NAME = "manifest.json"
POLICY_NAME = "policy.onnx"
PARAMS_NAME = "params.npy"
LR_NAME = "lr.npy"
#: Shipped bundles live in ``<SHIPPED_PACKAGE>/<SHIPPED_FOLDER>/<name>/`` (package data of
#: the installed ``assets`` package), one folder per task family.
SHIPPED_PACKAGE = "assets"
SHIPPED_FOLDER = "bundles"

POLICY_INPUTS = ("obs", "params")
POLICY_OUTPUTS = ("action_mean", "log_std")
#: The recurrent (memory) policy graph's inputs and outputs.
RECURRENT_POLICY_INPUTS = ("obs", "prev_action", "prev_reward", "prev_done", "h_in", "params")
RECURRENT_POLICY_OUTPUTS = ("action_mean", "log_std", "h_out")
#: ``metadata["adaptation"]``: by inner gradient steps (adapt graphs) or by memory (RL2).
ADAPTATION_KINDS = ("gradient", "memory")
ADAPT_INPUTS = ("params", "obs", "act", "adv", "old_logp", "weight", "lr", "clip")
#: The adapt graph's further inputs in a bundle whose policy draws a per-episode latent
#: around its context (``inner.latent_std``): ``latent [E, C]``, ``latent_old_logp [E]``,
#: ``latent_adv [E]``, ``episode [E, N]`` (:class:`metarobot.core.inner.EpisodeLatents`).
LATENT_ADAPT_INPUTS = ("latent", "latent_old_logp", "latent_adv", "episode")
#: The parameter that holds the policy's context (the latents' mean).
CONTEXT_NAME = "context"
ADAPT_OUTPUTS = ("new_params", "loss", "approx_kl")
#: ``metadata["inner"]["loss"]``: the inner objectives an adapt graph can hold (the same
#: as :data:`metarobot.core.inner.EXPORTABLE_INNER_LOSSES`).
ADAPT_LOSSES = ("lvc", "dynamics")

_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}

#: Safety rules a bundle may record in ``metadata["safety"]`` (defaults for the runtime's
#: :class:`deploy.SafetyConfig`; ranges: :data:`deploy.safety.SAFETY_RANGES`).
SAFETY_RULES: tuple[str, ...] = ("max_kl", "max_update_norm", "trial_episodes", "worse_margin")


class BundleError(ValueError):
    """A bundle (or a parameter file) is missing, corrupt, or does not fit this runtime."""


def adapt_file_name(steps: int) -> str:
    """File name of the adapt graph with ``steps`` unrolled inner steps."""
    return "adapt.onnx" if steps == 1 else f"adapt_k{steps}.onnx"


def params_sha256(flat: np.ndarray) -> str:
    """SHA-256 (hex) of a flat parameter vector as float32 little-endian bytes."""
    return hashlib.sha256(np.ascontiguousarray(flat, dtype="<f4").tobytes()).hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def encode_floats(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``"inf"``/``"-inf"``/``"nan"``."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {k: encode_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_floats(v) for v in value]
    return value


def decode_float(value: Any) -> float:
    """A JSON number, or one of the strings written by :func:`encode_floats`, as a float."""
    if isinstance(value, str):
        if value not in _NONFINITE:
            raise BundleError(f"expected a number or 'inf'/'-inf'/'nan', got {value!r}")
        return _NONFINITE[value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BundleError(f"expected a number, got {value!r}")
    return float(value)


def decode_array(values: Any, dtype: Any = np.float32) -> np.ndarray:
    """A (nested) JSON list of numbers/non-finite strings as a numpy array."""
    if isinstance(values, list):
        return np.asarray([decode_array(v, np.float64) for v in values], dtype=dtype)
    return np.asarray(decode_float(values), dtype=dtype)


def dumps_metadata(metadata: Mapping[str, Any]) -> str:
    """Strict JSON (non-finite floats encoded), floats at full precision, sorted keys."""
    return json.dumps(encode_floats(metadata), sort_keys=True, allow_nan=False)


@dataclass(frozen=True)
class Layout:
    """Flat-parameter layout (numpy twin of ``metarobot.core.policy.ParamLayout``)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    size: int

    @staticmethod
    def from_dict(layout: Any) -> Layout:
        """Parse and check a layout dict (``names``, ``shapes``, ``offsets``, ``size``).

        Raises:
            BundleError: not a mapping, a missing key, a non-string name, a non-integer
                or negative dim, offset or size, or a layout that is not contiguous or
                does not sum to ``size``.
        """
        layout = _mapping(layout, "parameter layout", ("names", "shapes", "offsets", "size"))
        names, shapes, offsets = layout["names"], layout["shapes"], layout["offsets"]
        if not all(isinstance(v, list) for v in (names, shapes, offsets)):
            raise BundleError("parameter layout: names, shapes and offsets must be lists")
        if not (len(names) == len(shapes) == len(offsets)):
            raise BundleError("parameter layout: names, shapes and offsets differ in length")
        size = _integer(layout["size"], "parameter layout size", 1)
        for name in names:
            _string(name, "parameter layout name")
        for shape in shapes:
            if not isinstance(shape, list):
                raise BundleError(f"parameter layout shapes must be lists, got {_kind(shape)}")
        parsed = tuple(tuple(_integer(d, "parameter layout dim", 0) for d in s)
                       for s in shapes)
        total = 0
        for name, shape, offset in zip(names, parsed, offsets):
            if _integer(offset, "parameter layout offset", 0) != total:
                raise BundleError(f"parameter layout: {name!r} starts at {offset}, "
                                  f"expected {total} (layout is not contiguous)")
            total += math.prod(shape)
        if total != size:
            raise BundleError(f"parameter layout sums to {total} parameters, but P = {size}")
        return Layout(tuple(names), parsed, tuple(offsets), size)

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes],
                "offsets": list(self.offsets), "size": self.size}

    def slice_of(self, name: str) -> slice:
        """Where parameter ``name`` lies in the flat parameters ``[P]``.

        Raises:
            BundleError: no parameter of that name.
        """
        if name not in self.names:
            raise BundleError(f"the policy has no {name!r} parameter")
        i = self.names.index(name)
        return slice(self.offsets[i], self.offsets[i] + math.prod(self.shapes[i]))


def check_context_only_rates(lr: np.ndarray, layout: Layout) -> None:
    """Per-parameter rates ``[P]`` that move the context alone (0 everywhere else): what a
    bundle with a per-episode latent (``inner.latent_std``) must have, since the runtime's
    trust region then measures the latent's KL alone (the actions given their latent must
    not change). The loader and the exporter both check it here.

    Raises:
        BundleError: the policy has no context, or naming the other parameters the rates
            move.
    """
    layout.slice_of(CONTEXT_NAME)  # raises for a policy without a context
    moved = [name for name in layout.names if name != CONTEXT_NAME
             and np.any(lr[layout.slice_of(name)] != 0)]
    if moved:
        raise BundleError("a per-episode latent (inner latent_std) takes a step that adapts "
                          f"its context alone (inner.adapt: context); its lr moves {moved}")


@dataclass(frozen=True)
class Bundle:
    """A loaded, validated bundle (see module docstring for the files).

    Attributes:
        path: the bundle directory.
        metadata: the metadata dict, as in the manifest and every model (JSON values).
        spec: the same metadata, typed and validated (:class:`BundleMetadata`).
        layout: the flat-parameter layout.
        params: the meta-learned parameters, float32 ``[P]`` (read-only).
        lr: the inner learning rate: a float32 scalar array ``[]`` or ``[P]`` (Meta-SGD);
            None in a memory bundle.
        clip: the inner likelihood-ratio clip (``inf`` = none; NaN in a memory bundle).
        obs_low, obs_high: observation bounds ``[O]`` (float32, may be infinite).
        act_low, act_high: action bounds ``[A]``; the runtime clips actions to them.
        adapt_files: unrolled step count K -> path of its adapt graph.
    """

    path: Path
    metadata: dict[str, Any]
    spec: BundleMetadata
    layout: Layout
    params: np.ndarray
    lr: np.ndarray | None
    clip: float
    obs_low: np.ndarray
    obs_high: np.ndarray
    act_low: np.ndarray
    act_high: np.ndarray
    adapt_files: dict[int, Path]

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def env_id(self) -> str:
        return self.spec.env_id

    @property
    def env_kwargs(self) -> dict[str, Any]:
        """Env options the policy was trained with (``{}`` in bundles that predate them)."""
        return dict(self.spec.env_kwargs)

    @property
    def obs_dim(self) -> int:
        return int(self.obs_low.shape[0])

    @property
    def act_dim(self) -> int:
        return int(self.act_low.shape[0])

    @property
    def inner(self) -> InnerSpec:
        """The inner step (loss, lr, clip, steps, gamma, lam, baseline, normalize).

        Raises:
            BundleError: a memory (RL2) bundle, which has none.
        """
        if self.spec.inner is None:
            raise BundleError(f"{self.path} adapts by memory (RL2): it has no inner step; "
                              "run it with deploy.recurrent.RecurrentPolicy")
        return self.spec.inner

    @property
    def adaptation(self) -> str:
        """``"gradient"`` or ``"memory"`` (see :data:`ADAPTATION_KINDS`)."""
        return self.spec.adaptation

    @property
    def safety_defaults(self) -> dict[str, float | int]:
        """Default safety rules recorded at export (e.g. ``max_kl`` from training,
        ``worse_margin``, ``trial_episodes``), typed; see :data:`SAFETY_RULES`."""
        return self.spec.safety.to_dict()

    @property
    def policy_file(self) -> Path:
        return self.path / self.spec.models.policy

    @property
    def context_slice(self) -> slice:
        """Where the policy's context parameter lies in the flat parameters ``[P]``.

        Raises:
            BundleError: the policy has no context.
        """
        try:
            return self.layout.slice_of(CONTEXT_NAME)
        except BundleError as err:
            raise BundleError(f"{self.path}: {err}") from None


# ---------------------------------------------------------------- typed JSON checks
def _kind(value: Any) -> str:
    """A short description of a JSON value's type, for error messages."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def _mapping(value: Any, what: str, required: tuple[str, ...] = (),
             optional: tuple[str, ...] = (), *, closed: bool = True) -> dict[str, Any]:
    """``value`` as a JSON object holding every ``required`` key and, when ``closed``,
    no key outside ``required + optional``."""
    if not isinstance(value, dict):
        raise BundleError(f"{what} must be a JSON object, got {_kind(value)}")
    missing = [k for k in required if k not in value]
    if missing:
        raise BundleError(f"{what} lacks {missing}")
    extra = sorted(str(k) for k in value if k not in required and k not in optional)
    if closed and extra:
        raise BundleError(f"{what} has unknown keys {extra}")
    return value


def _integer(value: Any, what: str, low: int | None = None, high: int | None = None) -> int:
    """A JSON integer (not a boolean, not a float) within ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BundleError(f"{what} must be an integer, got {_kind(value)} {value!r:.40}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise BundleError(f"{what} must be in [{low}, {high}], got {value}")
    return value


def _number(value: Any, what: str, *, low: float = -math.inf, high: float = math.inf,
            low_open: bool = False, finite: bool = True) -> float:
    """A JSON number (or ``"inf"``/``"-inf"`` when not ``finite``), never NaN, within
    ``[low, high]`` (``(low, high]`` when ``low_open``)."""
    try:
        number = decode_float(value)
    except BundleError as err:
        raise BundleError(f"{what}: {err}") from None
    if math.isnan(number) or (finite and math.isinf(number)):
        raise BundleError(f"{what} must be a {'finite ' if finite else ''}number, got {value!r}")
    if number < low or number > high or (low_open and number == low):
        bracket = "(" if low_open else "["
        raise BundleError(f"{what} must be in {bracket}{low}, {high}], got {number}")
    return number


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise BundleError(f"{what} must be a non-empty string, got {_kind(value)}")
    return value


def _file_name(value: Any, what: str) -> str:
    """A plain file name inside the bundle (no directory part, not the manifest)."""
    name = _string(value, what)
    if Path(name).name != name or name in (".", "..", MANIFEST_NAME) or "\x00" in name:
        raise BundleError(f"{what} must be a plain file name in the bundle, got {name!r}")
    return name


def _sha256_hex(value: Any, what: str) -> str:
    if not (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdef" for c in value)):
        raise BundleError(f"{what} must be a SHA-256 hex digest, got {value!r:.80}")
    return value


def _vector(value: Any, length: int, what: str, *, finite: bool = True) -> np.ndarray:
    """A flat JSON list of ``length`` numbers (non-finite strings allowed unless
    ``finite``; NaN never) as float64."""
    if not isinstance(value, list) or len(value) != length:
        got = f"{len(value)} values" if isinstance(value, list) else _kind(value)
        raise BundleError(f"{what} must be a list of {length} numbers, got {got}")
    return np.array([_number(v, f"{what}[{i}]", finite=finite) for i, v in enumerate(value)],
                    dtype=np.float64)


# ---------------------------------------------------------------- manifest sections
_MANIFEST_KEYS = ("format", "format_version", "files", "metadata")
_METADATA_KEYS = ("format", "format_version", "package", "versions", "opset", "family",
                  "env_id", "observation_space", "action_space", "normalizer", "policy",
                  "params", "models")
#: ``inner`` is required with gradient adaptation, ``recurrent`` with memory.
_METADATA_OPTIONAL = ("env_kwargs", "safety", "inner", "adaptation", "recurrent")
_INNER_KEYS = ("loss", "lr", "clip", "steps", "gamma", "lam", "baseline")
#: Largest number of unrolled inner steps a bundle may hold.
MAX_UNROLLED_STEPS = 64


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise BundleError(f"{path} is unreadable or not valid JSON: {err}") from err


def _check_header(manifest: Any, where: str) -> None:
    """Format and version of a manifest (or of its metadata)."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{where} is not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise BundleError(f"{where} has format version {version!r}; this runtime reads "
                          f"version {FORMAT_VERSION} (re-export it with a matching metarobot)")


def _check_files(files: Any, where: str) -> dict[str, tuple[int, str]]:
    """The manifest's ``files``: plain name -> (size, SHA-256)."""
    _mapping(files, f"{where} 'files'", closed=False)
    checked = {}
    for name, entry in files.items():
        what = f"{where} file entry {name!r:.80}"
        _file_name(name, what)
        entry = _mapping(entry, what, ("size", "sha256"))
        checked[name] = (_integer(entry["size"], f"{what} size", 0),
                         _sha256_hex(entry["sha256"], f"{what} sha256"))
    return checked


@dataclass(frozen=True)
class SpaceSpec:
    """A flat gymnasium ``Box`` space of ``D`` dims: ``metadata["observation_space"]`` and
    ``metadata["action_space"]``.

    Attributes:
        low, high: the bounds ``[D]`` (may be infinite, never NaN, ``low <= high``).
        dtype: the env's dtype name (e.g. ``"float32"``), or None if not recorded.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    dtype: str | None = None

    @property
    def dim(self) -> int:
        return len(self.low)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` as float32 arrays ``[D]`` (what the graphs see)."""
        return (np.asarray(self.low, dtype=np.float32), np.asarray(self.high, dtype=np.float32))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"shape": [self.dim], "low": list(self.low),
                               "high": list(self.high)}
        if self.dtype is not None:
            out["dtype"] = self.dtype
        return out

    @staticmethod
    def from_dict(space: Any, key: str) -> SpaceSpec:
        """Parse and check the space ``key``; raises :class:`BundleError`."""
        space = _mapping(space, f"metadata {key!r}", ("shape", "low", "high"), ("dtype",))
        shape = space["shape"]
        if not isinstance(shape, list) or len(shape) != 1:
            raise BundleError(f"metadata {key!r} shape must be [D] (a flat Box), "
                              f"got {shape!r:.80}")
        dim = _integer(shape[0], f"metadata {key!r} shape[0]", 1)
        low = _vector(space["low"], dim, f"metadata {key!r} low", finite=False)
        high = _vector(space["high"], dim, f"metadata {key!r} high", finite=False)
        if np.any(low > high):
            raise BundleError(f"metadata {key!r}: low exceeds high")
        dtype = space.get("dtype")
        return SpaceSpec(tuple(low.tolist()), tuple(high.tolist()),
                         None if dtype is None else str(dtype))


@dataclass(frozen=True)
class NormalizerSpec:
    """The observation normaliser folded into the policy graph (``metadata["normalizer"]``):
    ``clip((obs - mean) / sqrt(var + eps), -clip, clip)``; recorded for reference, the
    runtime feeds raw observations.

    Attributes:
        mean, var: per observation dim ``[O]`` (``var >= 0``).
        eps: added to ``var`` (>= 0); clip: bound of the normalised value (> 0, inf: none).
    """

    mean: tuple[float, ...]
    var: tuple[float, ...]
    eps: float
    clip: float

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "var": list(self.var), "eps": self.eps,
                "clip": self.clip, "folded": True}

    @staticmethod
    def from_dict(norm: Any, obs_dim: int) -> NormalizerSpec:
        """Parse and check; raises :class:`BundleError`."""
        norm = _mapping(norm, "metadata 'normalizer'", ("mean", "var", "eps", "clip", "folded"))
        mean = _vector(norm["mean"], obs_dim, "normalizer mean (one per observation dim)")
        var = _vector(norm["var"], obs_dim, "normalizer var (one per observation dim)")
        if np.any(var < 0):
            raise BundleError("normalizer var must be >= 0")
        eps = _number(norm["eps"], "normalizer eps", low=0.0)
        clip = _number(norm["clip"], "normalizer clip", low=0.0, low_open=True, finite=False)
        if norm["folded"] is not True:
            raise BundleError("normalizer folded must be true: this runtime feeds raw "
                              "observations to a graph with the normaliser inside")
        return NormalizerSpec(tuple(mean.tolist()), tuple(var.tolist()), eps, clip)


@dataclass(frozen=True)
class ParamsSpec:
    """The meta-learned parameters (``metadata["params"]``): their layout, the file that
    holds them (float32 ``[P]``) and its :func:`params_sha256`."""

    layout: Layout
    sha256: str
    file: str = PARAMS_NAME

    def to_dict(self) -> dict[str, Any]:
        return {"layout": self.layout.to_dict(), "sha256": self.sha256, "dtype": "float32",
                "file": self.file}

    @staticmethod
    def from_dict(params: Any) -> ParamsSpec:
        """Parse and check; raises :class:`BundleError`."""
        params = _mapping(params, "metadata 'params'", ("layout", "sha256", "dtype", "file"))
        layout = Layout.from_dict(params["layout"])
        sha256 = _sha256_hex(params["sha256"], "params sha256")
        file = _file_name(params["file"], "params file")
        if params["dtype"] != "float32":
            raise BundleError(f"params dtype must be 'float32', got {params['dtype']!r:.40}")
        return ParamsSpec(layout, sha256, file)


@dataclass(frozen=True)
class PerParameterLr:
    """Meta-SGD's inner learning rates: a float32 ``[P]`` file and its SHA-256."""

    file: str
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "per_parameter", "file": self.file, "sha256": self.sha256}


@dataclass(frozen=True)
class InnerSpec:
    """The inner (adaptation) step the bundle's adapt graphs implement (``metadata["inner"]``).

    Attributes:
        loss: the inner objective of the adapt graphs (:data:`ADAPT_LOSSES`, see
            :mod:`metarobot.core.inner`): ``"lvc"``, the policy-gradient surrogate, or
            ``"dynamics"``, a dynamics model's prediction error on the recorded
            transitions (the context adapts; ``weight`` is then each row's transition
            weight, :func:`deploy.recorder.adaptation_data`).
        lr: the step size: a float > 0, or :class:`PerParameterLr` (Meta-SGD).
        clip: likelihood-ratio clip of the surrogate (> 0; inf: none).
        steps: the inner steps K used in training (1..:data:`MAX_UNROLLED_STEPS`).
        gamma, lam: discount ``(0, 1]`` and GAE lambda ``[0, 1]`` of the advantages.
        baseline: the advantages' baseline (``"linear_feature"``: the per-task linear
            feature baseline of :mod:`deploy.advantages`, as in training).
        normalize: advantages normalised per task (True in bundles that predate the key).
        latent_std: the std sigma of the policy's per-episode latent around its context
            (MAESN-style exploration), or None (absent): each episode acts with its
            context parameter replaced by ``z ~ N(context, sigma^2 I)``, drawn at its
            start, and the adapt graphs take :data:`LATENT_ADAPT_INPUTS`.
    """

    loss: str
    lr: float | PerParameterLr
    clip: float
    steps: int
    gamma: float
    lam: float
    baseline: str
    normalize: bool = True
    latent_std: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss,
                "lr": self.lr.to_dict() if isinstance(self.lr, PerParameterLr) else self.lr,
                "clip": self.clip, "steps": self.steps, "gamma": self.gamma, "lam": self.lam,
                "baseline": self.baseline, "normalize": self.normalize,
                **({} if self.latent_std is None else {"latent_std": self.latent_std})}

    @staticmethod
    def from_dict(inner: Any) -> InnerSpec:
        """Parse and range-check; raises :class:`BundleError`."""
        inner = _mapping(inner, "metadata 'inner'", _INNER_KEYS, ("normalize", "latent_std"))
        if inner["loss"] not in ADAPT_LOSSES:
            raise BundleError(f"inner loss must be one of {list(ADAPT_LOSSES)} (an adapt "
                              f"graph's), got {inner['loss']!r:.40}")
        lr: float | PerParameterLr
        if isinstance(inner["lr"], dict):
            spec = _mapping(inner["lr"], "inner lr", ("kind", "file", "sha256"))
            if spec["kind"] != "per_parameter":
                raise BundleError(f"inner lr kind must be 'per_parameter', got "
                                  f"{spec['kind']!r:.40}")
            lr = PerParameterLr(_file_name(spec["file"], "inner lr file"),
                                _sha256_hex(spec["sha256"], "inner lr sha256"))
        else:
            lr = _number(inner["lr"], "inner lr", low=0.0, low_open=True)
        normalize = inner.get("normalize", True)
        if not isinstance(normalize, bool):
            raise BundleError(f"inner normalize must be a boolean, got {_kind(normalize)}")
        latent_std = inner.get("latent_std")
        if latent_std is not None:
            latent_std = _number(latent_std, "inner latent_std", low=0.0, low_open=True)
            if inner["loss"] != "lvc":
                raise BundleError("inner latent_std (a per-episode latent) takes the 'lvc' "
                                  f"inner loss, not {inner['loss']!r:.40}")
            if not isinstance(lr, PerParameterLr):
                raise BundleError("inner latent_std needs per-parameter learning rates "
                                  "(the step adapts the context alone)")
        return InnerSpec(
            loss=inner["loss"], lr=lr,
            clip=_number(inner["clip"], "inner clip", low=0.0, low_open=True, finite=False),
            steps=_integer(inner["steps"], "inner steps", 1, MAX_UNROLLED_STEPS),
            gamma=_number(inner["gamma"], "inner gamma", low=0.0, high=1.0, low_open=True),
            lam=_number(inner["lam"], "inner lam", low=0.0, high=1.0),
            baseline=_string(inner["baseline"], "inner baseline"), normalize=normalize,
            latent_std=latent_std)


@dataclass(frozen=True)
class SafetySpec:
    """Safety rules recorded at export (``metadata["safety"]``): defaults of the runtime's
    :class:`deploy.SafetyConfig` for the rules set here (None: the runtime's default).
    Ranges: :data:`deploy.safety.SAFETY_RANGES`.

    Attributes:
        max_kl: trust region on the adaptation's approximate KL (nats, > 0).
        max_update_norm: largest L2 norm of an update (> 0).
        trial_episodes: episodes an applied update is on trial for (>= 0).
        worse_margin: the trial's margin, in standard errors (>= 0).
    """

    max_kl: float | None = None
    max_update_norm: float | None = None
    trial_episodes: int | None = None
    worse_margin: float | None = None

    def to_dict(self) -> dict[str, float | int]:
        """The rules that are set (the JSON section, and ``SafetyConfig`` keyword args)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @staticmethod
    def from_dict(safety: Any) -> SafetySpec:
        """Parse and range-check; raises :class:`BundleError` for a non-mapping, an
        unknown rule, or a value of the wrong type or range."""
        safety = _mapping(safety, "metadata 'safety'", optional=SAFETY_RULES)
        checked: dict[str, float | int] = {}
        for key, value in safety.items():
            if SAFETY_RANGES[key][0] is float:  # JSON writes inf/nan as strings
                try:
                    value = decode_float(value)
                except BundleError as err:
                    raise BundleError(f"safety {key}: {err}") from None
            try:
                checked[key] = check_rule(key, value)
            except ValueError as err:
                raise BundleError(f"safety {err}") from None
        return SafetySpec(**checked)


@dataclass(frozen=True)
class ModelsSpec:
    """The graph files (``metadata["models"]``): the policy graph, and the adapt graph of
    each unrolled step count K (K = 1 always present)."""

    policy: str
    adapt: dict[int, str]

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "adapt": {str(k): v for k, v in self.adapt.items()}}

    @staticmethod
    def from_dict(models: Any, adaptation: str = "gradient") -> ModelsSpec:
        """Parse and check; raises :class:`BundleError`. A memory bundle has no adapt
        graphs (``adapt`` is empty); a gradient bundle has the one-step graph."""
        models = _mapping(models, "metadata 'models'", ("policy", "adapt"))
        policy = _file_name(models["policy"], "models policy")
        adapt = _mapping(models["adapt"], "models adapt", closed=False)
        files = {}
        for key, name in adapt.items():
            if not (key.isdigit() and str(int(key)) == key
                    and 1 <= int(key) <= MAX_UNROLLED_STEPS):
                raise BundleError(f"models adapt keys must be step counts "
                                  f"1..{MAX_UNROLLED_STEPS}, got {key!r:.40}")
            files[int(key)] = _file_name(name, f"models adapt {key}")
        if adaptation == "memory" and files:
            raise BundleError("a memory (RL2) bundle has no adapt graphs (models adapt must "
                              "be empty)")
        if adaptation == "gradient" and 1 not in files:
            raise BundleError("the bundle has no one-step adapt graph (models adapt '1')")
        return ModelsSpec(policy, files)


@dataclass(frozen=True)
class RecurrentSpec:
    """The recurrent policy of a memory bundle (``metadata["recurrent"]``): the size H of
    its hidden state, which starts at 0 for every new task and is carried across episodes.
    """

    hidden_size: int

    def to_dict(self) -> dict[str, Any]:
        return {"hidden_size": self.hidden_size}

    @staticmethod
    def from_dict(recurrent: Any) -> RecurrentSpec:
        """Parse and check; raises :class:`BundleError`."""
        recurrent = _mapping(recurrent, "metadata 'recurrent'", ("hidden_size",))
        return RecurrentSpec(_integer(recurrent["hidden_size"], "recurrent hidden_size", 1,
                                      1_000_000))


@dataclass(frozen=True)
class BundleMetadata:
    """The bundle metadata: written by :func:`metarobot.export.export_bundle` (with
    :meth:`to_dict`, into the manifest and every model) and read by :func:`load_bundle`
    (with :meth:`from_dict`, the one validator). ``format`` and ``format_version`` are
    always this module's :data:`FORMAT` and :data:`FORMAT_VERSION`.

    Attributes:
        package: the writer (``"metarobot"``); versions: package name -> version.
        opset: the graphs' ONNX opset.
        family, env_id: the task family and its gymnasium id.
        env_kwargs: env options the policy was trained with (``{}`` if none or not recorded).
        observation_space, action_space: the env's flat Box spaces ``[O]``, ``[A]``.
        normalizer: the observation normaliser folded into the policy graph.
        policy: a description of the policy network (informational, free-form).
        params: the meta-learned parameters' layout, file and hash.
        inner: the inner step (:class:`InnerSpec`); None in a memory bundle.
        safety: the recorded safety rules (:class:`SafetySpec`).
        models: the graph files (:class:`ModelsSpec`).
        adaptation: ``"gradient"`` or ``"memory"`` (:data:`ADAPTATION_KINDS`); written
            only for memory bundles (absent reads as gradient).
        recurrent: the recurrent policy (:class:`RecurrentSpec`) of a memory bundle, else
            None.
    """

    package: str
    versions: dict[str, Any]
    opset: int
    family: str
    env_id: str
    env_kwargs: dict[str, Any]
    observation_space: SpaceSpec
    action_space: SpaceSpec
    normalizer: NormalizerSpec
    policy: dict[str, Any]
    params: ParamsSpec
    inner: InnerSpec | None
    safety: SafetySpec
    models: ModelsSpec
    adaptation: str = "gradient"
    recurrent: RecurrentSpec | None = None

    def __post_init__(self) -> None:
        memory = self.adaptation == "memory"
        if self.adaptation not in ADAPTATION_KINDS:
            raise BundleError(f"metadata adaptation must be one of {list(ADAPTATION_KINDS)}, "
                              f"got {self.adaptation!r:.40}")
        if memory and (self.inner is not None or self.recurrent is None):
            raise BundleError("a memory (RL2) bundle has a 'recurrent' section and no 'inner'")
        if not memory and (self.inner is None or self.recurrent is not None):
            raise BundleError("a gradient bundle has an 'inner' section and no 'recurrent'")

    def to_dict(self) -> dict[str, Any]:
        """The metadata as JSON values (non-finite floats still floats: see
        :func:`dumps_metadata` and :func:`encode_floats`)."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "package": self.package,
                "versions": dict(self.versions), "opset": self.opset, "family": self.family,
                "env_id": self.env_id, "env_kwargs": dict(self.env_kwargs),
                "observation_space": self.observation_space.to_dict(),
                "action_space": self.action_space.to_dict(),
                "normalizer": self.normalizer.to_dict(), "policy": dict(self.policy),
                "params": self.params.to_dict(), "safety": self.safety.to_dict(),
                "models": self.models.to_dict(),
                **({"inner": self.inner.to_dict()} if self.inner is not None else {}),
                **({"adaptation": self.adaptation, "recurrent": self.recurrent.to_dict()}
                   if self.recurrent is not None else {})}

    @staticmethod
    def from_dict(metadata: Any, where: str = "bundle") -> BundleMetadata:
        """Parse a metadata dict: every section typed and range-checked.

        Raises:
            BundleError: naming ``where`` or the section and the problem; never another
                exception for malformed JSON values.
        """
        _check_header(metadata, f"{where} metadata")
        _mapping(metadata, f"{where} metadata", _METADATA_KEYS, _METADATA_OPTIONAL)
        env_kwargs = metadata.get("env_kwargs")
        if env_kwargs is not None:
            _mapping(env_kwargs, "metadata env_kwargs", closed=False)
        observation_space = SpaceSpec.from_dict(metadata["observation_space"],
                                                "observation_space")
        adaptation = metadata.get("adaptation", "gradient")
        if adaptation not in ADAPTATION_KINDS:
            raise BundleError(f"metadata adaptation must be one of {list(ADAPTATION_KINDS)}, "
                              f"got {adaptation!r:.40}")
        memory = adaptation == "memory"
        for key, wanted in (("inner", not memory), ("recurrent", memory)):
            if (key in metadata) != wanted:
                raise BundleError(f"{where} metadata {'lacks' if wanted else 'has'} {key!r} "
                                  f"(a {adaptation} bundle {'has' if wanted else 'has no'} "
                                  "such section)")
        return BundleMetadata(
            package=_string(metadata["package"], "metadata package"),
            versions=_mapping(metadata["versions"], "metadata versions", closed=False),
            opset=_integer(metadata["opset"], "metadata opset", 1, 1000),
            family=_string(metadata["family"], "metadata family"),
            env_id=_string(metadata["env_id"], "metadata env_id"),
            env_kwargs=dict(env_kwargs or {}),
            observation_space=observation_space,
            action_space=SpaceSpec.from_dict(metadata["action_space"], "action_space"),
            normalizer=NormalizerSpec.from_dict(metadata["normalizer"],
                                                observation_space.dim),
            policy=_mapping(metadata["policy"], "metadata policy", closed=False),
            params=ParamsSpec.from_dict(metadata["params"]),
            inner=None if memory else InnerSpec.from_dict(metadata["inner"]),
            safety=SafetySpec.from_dict(metadata.get("safety", {})),
            models=ModelsSpec.from_dict(metadata["models"], adaptation),
            adaptation=adaptation,
            recurrent=RecurrentSpec.from_dict(metadata["recurrent"]) if memory else None)


def check_safety(safety: Any) -> dict[str, float | int]:
    """The recorded safety rules, typed and range-checked (:meth:`SafetySpec.from_dict`).

    Raises:
        BundleError: not a mapping, an unknown rule, or a value of the wrong type or range.
    """
    return SafetySpec.from_dict(safety).to_dict()


# ---------------------------------------------------------------- files and graphs
def read_model_metadata(path: Path) -> dict[str, Any]:
    """The bundle metadata stored in an ONNX model's ``metadata_props`` (read with ORT)."""
    return session_metadata(open_session(path), path)


def open_session(path: Path, threads: int = 1) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU, ``threads`` intra-op threads,
    sequential execution (the fastest setting for these small graphs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own exception types for a bad model
        raise BundleError(f"{path} is not a loadable ONNX model: {err}") from err


def session_metadata(session: Any, path: Path) -> dict[str, Any]:
    """The bundle metadata of an open ORT session of the model at ``path``."""
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise BundleError(f"{path} has no {METADATA_KEY!r} metadata: not a metarobot model")
    try:
        return json.loads(props[METADATA_KEY])
    except (json.JSONDecodeError, RecursionError) as err:
        raise BundleError(f"{path}: metadata {METADATA_KEY!r} is not valid JSON") from err


def _signature(args: Any) -> list[tuple[str, str, tuple[Any, ...]]]:
    """``(name, type, shape)`` of ORT NodeArgs; a dynamic dim (a name or None) is ``None``."""
    return [(a.name, a.type, tuple(d if isinstance(d, int) else None for d in (a.shape or ())))
            for a in args]


def _expect(path: Path, what: str, got: list[tuple[str, str, tuple[Any, ...]]],
            want: list[tuple[str, tuple[Any, ...]]]) -> None:
    """Names, float32 type and shapes of a graph's inputs or outputs (``None`` = dynamic)."""
    expected = [(name, "tensor(float)", shape) for name, shape in want]
    if got != expected:
        def show(sig: list[tuple[str, str, tuple[Any, ...]]]) -> str:
            return ", ".join(f"{n}: {t} {['N' if d is None else d for d in s]}"
                             for n, t, s in sig)
        raise BundleError(f"{path}: {what} are [{show(got)}], the metadata implies "
                          f"[{show(expected)}]")


def check_graph_signatures(bundle: Bundle, policy: Any, adapt: Mapping[int, Any]) -> None:
    """The graphs' input and output names, dtypes and shapes against the metadata.

    Args:
        bundle: the loaded bundle (its dims O, A, P and lr kind).
        policy: an ORT session of ``policy.onnx``; adapt: K -> session of its adapt graph.

    Raises:
        BundleError: naming the graph, what it has and what the metadata implies.
    """
    o, a, p = bundle.obs_dim, bundle.act_dim, bundle.layout.size
    recurrent = bundle.spec.recurrent
    if recurrent is None:
        inputs = [("obs", (None, o))]
        outputs = [("action_mean", (None, a)), ("log_std", (None, a))]
    else:
        h = recurrent.hidden_size
        inputs = [("obs", (None, o)), ("prev_action", (None, a)), ("prev_reward", (None,)),
                  ("prev_done", (None,)), ("h_in", (None, h))]
        outputs = [("action_mean", (None, a)), ("log_std", (None, a)), ("h_out", (None, h))]
    _expect(bundle.policy_file, "inputs", _signature(policy.get_inputs()), inputs)
    params = [s for s in _signature(policy.get_overridable_initializers()) if s[0] == "params"]
    _expect(bundle.policy_file, "overridable 'params' initializers", params,
            [("params", (p,))])
    _expect(bundle.policy_file, "outputs", _signature(policy.get_outputs()), outputs)
    if bundle.lr is None:
        return
    lr_shape = tuple(bundle.lr.shape)
    latent = []
    if bundle.inner.latent_std is not None:
        c = bundle.context_slice.stop - bundle.context_slice.start
        latent = [("latent", (None, c)), ("latent_old_logp", (None,)),
                  ("latent_adv", (None,)), ("episode", (None, None))]
    for steps, session in adapt.items():
        path = bundle.adapt_files[steps]
        _expect(path, "inputs", _signature(session.get_inputs()),
                [("params", (p,)), ("obs", (None, o)), ("act", (None, a)), ("adv", (None,)),
                 ("old_logp", (None,)), ("weight", (None,)), ("lr", lr_shape), ("clip", ()),
                 *latent])
        _expect(path, "outputs", _signature(session.get_outputs()),
                [("new_params", (p,)), ("loss", ()), ("approx_kl", ())])


def _load_npy(path: Path, size: int, what: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises several types for a malformed file
        raise BundleError(f"{path} is not a readable .npy file: {err}") from err
    if not isinstance(array, np.ndarray):  # e.g. an .npz archive under a .npy name
        raise BundleError(f"{path} is not a .npy array file")
    if array.dtype != np.float32 or array.shape != (size,):
        raise BundleError(f"{what} in {path} must be float32 [{size}], "
                          f"got {array.dtype} {list(array.shape)}")
    if not np.all(np.isfinite(array)):
        raise BundleError(f"{what} in {path} contains NaN or inf")
    array.setflags(write=False)
    return array


def _verify_files(root: Path, files: Mapping[str, tuple[int, str]]) -> None:
    """Every listed file exists with its listed size and SHA-256."""
    for name, (size, sha256) in files.items():
        file = root / name
        try:
            if not file.is_file():
                raise BundleError(f"bundle file {file} listed in the manifest is missing")
            actual = file.stat().st_size
            if actual != size:
                raise BundleError(f"bundle file {file} has {actual} bytes, the manifest says "
                                  f"{size} (truncated or replaced)")
            digest = file_sha256(file)
        except OSError as err:
            raise BundleError(f"bundle file {file} is unreadable: {err}") from err
        if digest != sha256:
            raise BundleError(f"bundle file {file} does not match its SHA-256 in the "
                              "manifest (corrupt or tampered)")


def shipped_bundles() -> dict[str, Path]:
    """The bundles shipped with the package: name (e.g. ``"reach"``) -> directory.

    A shipped bundle is a folder of ``assets/bundles/`` (installed package data) that
    holds a ``manifest.json``; nothing is validated here. Empty when the ``assets``
    package is not installed (e.g. a device install of ``deploy`` alone).
    """
    try:
        root = Path(str(resources.files(SHIPPED_PACKAGE) / SHIPPED_FOLDER))
        if not root.is_dir():
            return {}
        return {p.name: p for p in sorted(root.iterdir())
                if p.is_dir() and (p / MANIFEST_NAME).is_file()}
    except Exception:  # noqa: BLE001  no (or another, broken) assets package, unreadable
        return {}  # folder: no shipped bundles, never a crash of the loader


def resolve_bundle(bundle: str | Path) -> Path:
    """The directory of ``bundle``: a path, or the name of a shipped bundle.

    An existing path wins (``--bundle reach`` with a local ``reach/`` directory loads that
    one; write ``./reach`` to be explicit); otherwise a plain name (no directory part) that
    names a shipped bundle gives its installed directory (see :func:`shipped_bundles`).

    Raises:
        BundleError: ``bundle`` is neither an existing path nor a shipped name; the message
            lists the shipped names.
    """
    path = Path(bundle)
    if path.exists():
        return path
    shipped = shipped_bundles()
    text = str(bundle)
    if text in shipped:
        return shipped[text]
    names = ", ".join(shipped) if shipped else "none installed"
    raise BundleError(f"no bundle {text!r}: not a directory, nor the name of a shipped bundle "
                      f"(shipped: {names})")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The bundle's ``manifest.json`` if it is one of this format and version.

    Only the header is checked (``format``, ``format_version``, a ``files`` object):
    enough to tell a bundle from another directory (used before replacing one).

    Raises:
        BundleError: no manifest, unreadable, or not a bundle manifest of this version.
    """
    root = Path(path)
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{root} is not a metarobot bundle: {MANIFEST_NAME} is missing")
    manifest = _read_json(manifest_path)
    _check_header(manifest, str(manifest_path))
    _check_files(manifest.get("files"), str(manifest_path))
    return manifest


def load_bundle(path: str | Path, *, family: str | None = None,
                check_models: bool = True) -> Bundle:
    """Load and validate a bundle directory.

    Checks: the manifest is present and of this format and version, with no unknown or
    missing keys; every metadata value has its type and range (spaces, normaliser,
    layout, inner-step settings, models, safety rules); every listed file exists with the
    listed size and SHA-256 (a tampered or truncated file fails); every file the metadata
    names is listed; ``params.npy`` (and ``lr.npy``) are float32 ``[P]``, finite, and hash
    to the metadata; the family matches ``family`` when given; with ``check_models``,
    every model opens, embeds metadata equal to the manifest's, and has the input and
    output names, dtypes and shapes the metadata implies.

    Args:
        path: the bundle directory, or the name of a shipped bundle (``"reach"``; see
            :func:`resolve_bundle`: an existing path wins).
        family: the task family the caller expects (e.g. ``"reach"``); ``None`` accepts any.
        check_models: also open every model and check its metadata and signature.

    Raises:
        BundleError: naming the file and the problem; never another exception for a
            malformed bundle.
    """
    root = resolve_bundle(path)
    manifest = read_manifest(root)
    where = str(root / MANIFEST_NAME)
    _mapping(manifest, where, _MANIFEST_KEYS)
    files = _check_files(manifest["files"], where)
    metadata = manifest["metadata"]
    spec = BundleMetadata.from_dict(metadata, where)
    if family is not None and spec.family != family:
        raise BundleError(f"bundle {root} is for task family {spec.family!r}, "
                          f"expected {family!r}")
    lr_spec = spec.inner.lr if spec.inner is not None else None
    named = {spec.models.policy, spec.params.file, *spec.models.adapt.values()}
    if isinstance(lr_spec, PerParameterLr):
        named.add(lr_spec.file)
    unlisted = sorted(n for n in named if n not in files)
    if unlisted:
        raise BundleError(f"{where}: files {unlisted} are not in the manifest")
    _verify_files(root, files)

    layout = spec.params.layout
    params = _load_npy(root / spec.params.file, layout.size, "meta-learned params")
    if params_sha256(params) != spec.params.sha256:
        raise BundleError(f"{root}: the meta-learned parameters do not match the metadata's "
                          "SHA-256")
    lr: np.ndarray | None
    if lr_spec is None:
        lr = None  # a memory bundle: no inner step
    elif isinstance(lr_spec, PerParameterLr):
        lr = _load_npy(root / lr_spec.file, layout.size, "per-parameter learning rates")
        if params_sha256(lr) != lr_spec.sha256:
            raise BundleError(f"{root}: {lr_spec.file} does not match its metadata SHA-256")
    else:
        with np.errstate(over="ignore"):  # a float64 lr beyond float32 becomes inf
            lr = np.asarray(lr_spec, dtype=np.float32)
        if not (np.isfinite(lr) and lr > 0):  # also a float64 lr that overflows float32
            raise BundleError(f"{where}: inner lr {lr_spec!r} is not a finite float32 > 0")
        lr.setflags(write=False)
    clip = spec.inner.clip if spec.inner is not None else math.nan
    bundle = Bundle(root, metadata, spec, layout, params, lr, clip,
                    *spec.observation_space.bounds(), *spec.action_space.bounds(),
                    {k: root / v for k, v in spec.models.adapt.items()})
    if spec.inner is not None and spec.inner.latent_std is not None:
        assert lr is not None
        try:
            check_context_only_rates(lr, layout)
        except BundleError as err:
            raise BundleError(f"{root}: {err}") from None
    if check_models:
        policy = open_session(bundle.policy_file)
        adapt = {k: open_session(p) for k, p in bundle.adapt_files.items()}
        check_embedded_metadata(bundle, policy, adapt)
        check_graph_signatures(bundle, policy, adapt)
    return bundle


def check_default_params(bundle: Bundle, policy: Any, feeds: Mapping[str, np.ndarray],
                         ) -> None:
    """The policy graph's default ``params`` initializer is the bundle's ``params.npy``:
    ``policy`` run on ``feeds`` without and with ``params`` gives the same outputs.

    Raises:
        BundleError: the graph cannot run, or its defaults differ.
    """
    try:
        default = policy.run(None, dict(feeds))
        explicit = policy.run(None, {**feeds, "params": bundle.params})
    except Exception as err:  # a graph that loads but cannot run (ORT's own types)
        raise BundleError(f"{bundle.policy_file} fails to run: {err}") from err
    if not all(np.array_equal(x, y) for x, y in zip(default, explicit)):
        raise BundleError(f"{bundle.policy_file}: its default parameters differ from "
                          f"{bundle.spec.params.file}")


def check_embedded_metadata(bundle: Bundle, policy: Any, adapt: Mapping[int, Any]) -> None:
    """Every model's embedded metadata equals the manifest's.

    Raises:
        BundleError: naming the model that differs.
    """
    sessions = {bundle.policy_file: policy,
                **{bundle.adapt_files[k]: s for k, s in adapt.items()}}
    for path, session in sessions.items():
        if session_metadata(session, path) != bundle.metadata:
            raise BundleError(f"{path}: embedded metadata differs from the manifest")


def write_manifest(root: Path, file_names: list[str], metadata: Mapping[str, Any]) -> Path:
    """Write ``manifest.json`` listing ``file_names`` (size, SHA-256) and ``metadata``."""
    files = {name: {"size": (root / name).stat().st_size, "sha256": file_sha256(root / name)}
             for name in sorted(file_names)}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "files": files,
                "metadata": encode_floats(metadata)}
    path = root / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False) + "\n",
                    encoding="utf-8")
    return path
