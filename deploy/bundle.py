"""The bundle format: constants, hashing, JSON encoding and the validating loader.

A bundle is a directory written by :func:`metarobot.export.export_bundle`::

    policy.onnx      obs[B,O] (+ optional params[P]) -> action_mean[B,A], log_std[B,A]
    adapt.onnx       one inner step:  params, obs, act, adv, old_logp, weight, lr, clip
                                      -> new_params[P], loss[], approx_kl[]
    adapt_kK.onnx    K unrolled inner steps on the same data (K in the bundle's options)
    params.npy       the meta-learned flat parameters, float32 [P]
    lr.npy           (Meta-SGD only) the per-parameter inner learning rates, float32 [P]
    manifest.json    {"format", "format_version", "files": {name: {size, sha256}}, "metadata"}

Every model carries the same metadata JSON in its ``metadata_props`` under
:data:`METADATA_KEY`. This module is numpy + onnxruntime only (it never imports torch), so
the device runtime and the exporter share one definition of the format.

Floats in the metadata JSON are written with ``repr`` precision (Python's ``json`` does
this), so float32 values round-trip exactly; non-finite floats, which strict JSON cannot
hold, are written as the strings ``"inf"``, ``"-inf"`` and ``"nan"``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "metarobot.bundle"
#: Bumped on any incompatible change of files, graph signatures or metadata keys.
FORMAT_VERSION = 1
#: The ``metadata_props`` key (of every model) that holds the bundle metadata JSON.
METADATA_KEY = "metarobot.bundle"
MANIFEST_NAME = "manifest.json"
POLICY_NAME = "policy.onnx"
PARAMS_NAME = "params.npy"
LR_NAME = "lr.npy"

POLICY_INPUTS = ("obs", "params")
POLICY_OUTPUTS = ("action_mean", "log_std")
ADAPT_INPUTS = ("params", "obs", "act", "adv", "old_logp", "weight", "lr", "clip")
ADAPT_OUTPUTS = ("new_params", "loss", "approx_kl")

_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


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
    """Flat-parameter layout (numpy twin of ``metarobot.policy.ParamLayout``)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    size: int

    @staticmethod
    def from_dict(layout: Mapping[str, Any]) -> Layout:
        """Parse and check a layout dict (``names``, ``shapes``, ``offsets``, ``size``)."""
        try:
            names = tuple(str(n) for n in layout["names"])
            shapes = tuple(tuple(int(d) for d in s) for s in layout["shapes"])
            offsets = tuple(int(o) for o in layout["offsets"])
            size = int(layout["size"])
        except (KeyError, TypeError, ValueError) as err:
            raise BundleError(f"malformed parameter layout: {err!r}") from err
        if not (len(names) == len(shapes) == len(offsets)):
            raise BundleError("parameter layout: names, shapes and offsets differ in length")
        total = 0
        for name, shape, offset in zip(names, shapes, offsets):
            if offset != total:
                raise BundleError(f"parameter layout: {name!r} starts at {offset}, "
                                  f"expected {total} (layout is not contiguous)")
            total += math.prod(shape)
        if total != size:
            raise BundleError(f"parameter layout sums to {total} parameters, but P = {size}")
        return Layout(names, shapes, offsets, size)

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes],
                "offsets": list(self.offsets), "size": self.size}


@dataclass(frozen=True)
class Bundle:
    """A loaded, validated bundle (see module docstring for the files).

    Attributes:
        path: the bundle directory.
        metadata: the metadata dict (as in the manifest and every model).
        layout: the flat-parameter layout.
        params: the meta-learned parameters, float32 ``[P]`` (read-only).
        lr: the inner learning rate: a float32 scalar array ``[]`` or ``[P]`` (Meta-SGD).
        clip: the inner likelihood-ratio clip (``inf`` = none).
        obs_low, obs_high: observation bounds ``[O]`` (float32, may be infinite).
        act_low, act_high: action bounds ``[A]``; the runtime clips actions to them.
        adapt_files: unrolled step count K -> path of its adapt graph.
    """

    path: Path
    metadata: dict[str, Any]
    layout: Layout
    params: np.ndarray
    lr: np.ndarray
    clip: float
    obs_low: np.ndarray
    obs_high: np.ndarray
    act_low: np.ndarray
    act_high: np.ndarray
    adapt_files: dict[int, Path]

    @property
    def family(self) -> str:
        return str(self.metadata["family"])

    @property
    def env_id(self) -> str:
        return str(self.metadata["env_id"])

    @property
    def env_kwargs(self) -> dict[str, Any]:
        """Env options the policy was trained with (``{}`` in bundles that predate them)."""
        return dict(self.metadata.get("env_kwargs") or {})

    @property
    def obs_dim(self) -> int:
        return int(self.obs_low.shape[0])

    @property
    def act_dim(self) -> int:
        return int(self.act_low.shape[0])

    @property
    def inner(self) -> dict[str, Any]:
        """The inner-loop configuration (loss, lr, clip, steps, gamma, lam, baseline, ...)."""
        return dict(self.metadata["inner"])

    @property
    def safety_defaults(self) -> dict[str, float]:
        """Default safety rules recorded at export (e.g. ``max_kl`` from training)."""
        return {k: float(v) for k, v in self.metadata.get("safety", {}).items()}

    @property
    def policy_file(self) -> Path:
        return self.path / self.metadata["models"]["policy"]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{path} is unreadable or not valid JSON: {err}") from err


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
    except json.JSONDecodeError as err:
        raise BundleError(f"{path}: metadata {METADATA_KEY!r} is not valid JSON") from err


def _load_npy(path: Path, size: int, what: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise BundleError(f"{path} is not a readable .npy file: {err}") from err
    if array.dtype != np.float32 or array.shape != (size,):
        raise BundleError(f"{what} in {path} must be float32 [{size}], "
                          f"got {array.dtype} {list(array.shape)}")
    if not np.all(np.isfinite(array)):
        raise BundleError(f"{what} in {path} contains NaN or inf")
    array.setflags(write=False)
    return array


def _space_bounds(metadata: Mapping[str, Any], key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        space = metadata[key]
        shape = tuple(int(d) for d in space["shape"])
        low, high = decode_array(space["low"]), decode_array(space["high"])
    except (KeyError, TypeError) as err:
        raise BundleError(f"metadata {key!r} is malformed: {err!r}") from err
    if len(shape) != 1 or low.shape != shape or high.shape != shape:
        raise BundleError(f"metadata {key!r}: expected a flat Box with low/high of its shape, "
                          f"got shape {list(shape)}, low {list(low.shape)}, "
                          f"high {list(high.shape)}")
    if np.any(low > high):
        raise BundleError(f"metadata {key!r}: low exceeds high")
    return low, high


def load_bundle(path: str | Path, *, family: str | None = None,
                check_models: bool = True) -> Bundle:
    """Load and validate a bundle directory.

    Checks: the manifest is present and of this format and version; every listed file
    exists with the listed size and SHA-256 (a tampered or truncated file fails); the
    layout sums to P; ``params.npy`` hashes to the metadata's ``params.sha256``; every
    model's embedded metadata equals the manifest's; the family matches ``family`` when
    given.

    Args:
        path: the bundle directory.
        family: the task family the caller expects (e.g. ``"reach"``); ``None`` accepts any.
        check_models: also compare each model's embedded metadata (opens every model once).

    Raises:
        BundleError: naming the file and the problem.
    """
    root = Path(path)
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{root} is not a metarobot bundle: {MANIFEST_NAME} is missing")
    manifest = _read_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{manifest_path} is not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"bundle {root} has format version {version!r}; this runtime "
                          f"reads version {FORMAT_VERSION} (re-export it with a matching "
                          "metarobot)")
    metadata = manifest.get("metadata")
    files = manifest.get("files")
    if not isinstance(metadata, dict) or not isinstance(files, dict):
        raise BundleError(f"{manifest_path} lacks 'metadata' or 'files'")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{manifest_path}: metadata format version "
                          f"{metadata.get('format_version')!r} != {FORMAT_VERSION}")
    if family is not None and metadata.get("family") != family:
        raise BundleError(f"bundle {root} is for task family {metadata.get('family')!r}, "
                          f"expected {family!r}")

    for name, entry in files.items():
        file = root / name
        if Path(name).name != name or not isinstance(entry, dict):
            raise BundleError(f"{manifest_path}: bad file entry {name!r}: {entry!r}")
        if not file.is_file():
            raise BundleError(f"bundle file {file} listed in the manifest is missing")
        if file.stat().st_size != entry.get("size"):
            raise BundleError(f"bundle file {file} has {file.stat().st_size} bytes, the "
                              f"manifest says {entry.get('size')} (truncated or replaced)")
        if file_sha256(file) != entry.get("sha256"):
            raise BundleError(f"bundle file {file} does not match its SHA-256 in the "
                              "manifest (corrupt or tampered)")

    try:
        models = metadata["models"]
        layout = Layout.from_dict(metadata["params"]["layout"])
        inner = metadata["inner"]
        adapt_files = {int(k): root / v for k, v in models["adapt"].items()}
        listed = {models["policy"], metadata["params"]["file"], *models["adapt"].values()}
        lr_spec = inner["lr"]
        clip = decode_float(inner["clip"])
    except (KeyError, TypeError, ValueError) as err:
        raise BundleError(f"{manifest_path}: metadata is malformed: {err!r}") from err
    if isinstance(lr_spec, dict):
        listed.add(lr_spec.get("file"))
    unlisted = sorted(str(n) for n in listed if n not in files)
    if unlisted:
        raise BundleError(f"{manifest_path}: files {unlisted} are not in the manifest")
    if 1 not in adapt_files:
        raise BundleError(f"{manifest_path}: the bundle has no one-step adapt graph")
    safety = metadata.get("safety", {})
    if not isinstance(safety, dict) or any(
            k not in ("max_kl", "max_update_norm") or not isinstance(v, (int, float))
            or not (math.isfinite(v) and v > 0) for k, v in safety.items()):
        raise BundleError(f"{manifest_path}: metadata 'safety' must map max_kl/"
                          f"max_update_norm to finite positive numbers, got {safety!r}")

    params = _load_npy(root / metadata["params"]["file"], layout.size, "meta-learned params")
    if params_sha256(params) != metadata["params"]["sha256"]:
        raise BundleError(f"{root}: the meta-learned parameters do not match the metadata's "
                          "SHA-256")
    if isinstance(lr_spec, dict):
        lr = _load_npy(root / lr_spec["file"], layout.size, "per-parameter learning rates")
        if params_sha256(lr) != lr_spec.get("sha256"):
            raise BundleError(f"{root}: {lr_spec['file']} does not match its metadata SHA-256")
    else:
        lr = np.asarray(decode_float(lr_spec), dtype=np.float32)
        if not np.isfinite(lr):
            raise BundleError(f"{manifest_path}: inner lr {lr_spec!r} is not finite")
        lr.setflags(write=False)
    if not clip > 0:
        raise BundleError(f"{manifest_path}: inner clip must be > 0, got {clip}")

    obs_low, obs_high = _space_bounds(metadata, "observation_space")
    act_low, act_high = _space_bounds(metadata, "action_space")
    norm = metadata.get("normalizer", {})
    if len(norm.get("mean", ())) != obs_low.shape[0]:
        raise BundleError(f"{manifest_path}: normaliser size does not match the observation "
                          "space")

    if check_models:
        for model in [root / models["policy"], *adapt_files.values()]:
            if read_model_metadata(model) != metadata:
                raise BundleError(f"{model}: embedded metadata differs from the manifest")
    return Bundle(root, metadata, layout, params, lr, clip, obs_low, obs_high, act_low,
                  act_high, adapt_files)


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
