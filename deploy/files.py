"""Atomic file writes, shared by the runtime (parameter files, ``metarobot-deploy`` JSON)
and the trainer (checkpoints, configs). Standard library only."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write_bytes(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write a file by ``write(file_object)`` into a temporary file in the same directory
    (``.NAME.*.tmp``), fsync, then rename: a reader, or a crash at any point, sees the
    old file or the whole new one, never a part."""
    path = Path(path)
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
