"""Atomic checkpoints: a crash, a kill or a NaN never destroys the last good state."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "iteration", "config", "model", "optimizer", "normalizer",
                 "rng", "algo_state")


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Write a file by ``write(file_object)`` into a temporary file, fsync, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temporary_files(directory: Path, name: str) -> list[Path]:
    """The temporary files :func:`atomic_write_bytes` leaves for ``directory/name`` when
    it is killed before its rename (``.NAME.*.tmp``)."""
    return sorted(p for p in Path(directory).glob(f".{name}.*.tmp") if p.is_file())


def remove_orphan_temporaries(directory: Path, names: tuple[str, ...]) -> list[Path]:
    """Delete the leftover temporary files of ``names`` in ``directory``; returns them.

    Only for a directory this process owns (a run being started or resumed): another
    writer's temporary file would be taken from under it.
    """
    removed = [tmp for name in names for tmp in temporary_files(directory, name)]
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save a checkpoint dict atomically (see :data:`REQUIRED_KEYS`)."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load and check a checkpoint; a corrupt or incompatible file raises ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a damaged file
        raise ValueError(f"checkpoint {path} is corrupt or unreadable: {err}") from err
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} is not a metarobot checkpoint")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint {path} is not a metarobot checkpoint (missing {missing})")
    if state["format_version"] != FORMAT_VERSION:
        raise ValueError(f"checkpoint {path} has format version {state['format_version']}, "
                         f"this metarobot reads version {FORMAT_VERSION}")
    return state
