"""Shared helpers of the benchmark scripts: the machine and versions a figure came from."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "pybullet", "gymnasium", "numpy", "onnxruntime")


@functools.cache
def git_head() -> str:
    """The commit checked out when first called ("" outside git): a script that calls it
    at start records the code it loaded, not a commit made while it ran."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return ""


def machine_info(packages: tuple[str, ...] = PACKAGES) -> dict[str, Any]:
    """Host, CPU model, core count, Python, package versions and the git commit."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"hostname": socket.gethostname(), "cpu_model": cpu, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform(),
            "versions": versions, "git_commit": git_head()}
