"""Parameter files: policy parameters (e.g. adapted ones) saved for a bundle, and read back.

A file is an ``.npz`` of ``params`` (float32 ``[P]``) and ``meta``, a JSON header naming the
format, the bundle family, env id and parameter layout, the SHA-256 of the meta-learned
parameters they came from and their own SHA-256. Reading checks all of it, so parameters
are never used with another bundle. numpy only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from deploy.bundle import Bundle, BundleError, Layout, params_sha256
from deploy.files import atomic_write_bytes

PARAMS_FORMAT = "metarobot.params"
PARAMS_FORMAT_VERSION = 1


def write_params_file(path: str | Path, params: np.ndarray, bundle: Bundle) -> Path:
    """Write ``params`` (float32 ``[P]``) of ``bundle`` to ``path``, atomically (a
    temporary file in the same directory, then a rename). Returns the path."""
    path = Path(path)
    meta = {"format": PARAMS_FORMAT, "format_version": PARAMS_FORMAT_VERSION,
            "family": bundle.family, "env_id": bundle.env_id,
            "layout": bundle.layout.to_dict(),
            "base_params_sha256": bundle.spec.params.sha256,
            "sha256": params_sha256(params)}
    atomic_write_bytes(path, lambda f: np.savez(f, params=params,
                                                meta=np.asarray(json.dumps(meta))))
    return path


def read_params_file(path: str | Path, bundle: Bundle) -> np.ndarray:
    """The parameters in ``path``, checked against ``bundle``: a read-only float32 ``[P]``.

    Raises:
        BundleError: unreadable file, another format, family, layout or meta-learned
            parameters, a hash mismatch, or non-finite values.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            params, meta = data["params"], json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError) as err:
        raise BundleError(f"{path} is not a readable metarobot parameter file: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != PARAMS_FORMAT:
        raise BundleError(f"{path} is not a metarobot parameter file")
    if meta.get("format_version") != PARAMS_FORMAT_VERSION:
        raise BundleError(f"{path} has format version {meta.get('format_version')!r}, "
                          f"this runtime reads {PARAMS_FORMAT_VERSION}")
    if meta.get("family") != bundle.family:
        raise BundleError(f"{path} holds parameters of family {meta.get('family')!r}, the "
                          f"bundle is {bundle.family!r}")
    if Layout.from_dict(meta.get("layout", {})) != bundle.layout:
        raise BundleError(f"{path}: parameter layout differs from the bundle's")
    if meta.get("base_params_sha256") != bundle.spec.params.sha256:
        raise BundleError(f"{path} was adapted from other meta-learned parameters than "
                          "this bundle's")
    if params.dtype != np.float32 or params.shape != (bundle.layout.size,):
        raise BundleError(f"{path}: params must be float32 [{bundle.layout.size}], got "
                          f"{params.dtype} {list(params.shape)}")
    if params_sha256(params) != meta.get("sha256"):
        raise BundleError(f"{path}: params do not match their SHA-256 (corrupt)")
    if not np.isfinite(params).all():
        raise BundleError(f"{path}: params contain NaN or inf")
    params = params.copy()
    params.setflags(write=False)
    return params
