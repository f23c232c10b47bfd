"""Shared helpers of the benchmark scripts: the machine, versions and command a figure came
from, and the JSON they write."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import math
import os
import platform
import shlex
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

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


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that is running, as a user would type it from the repository root
    (``argv``: the arguments, default this process's)."""
    args = sys.argv[1:] if argv is None else argv
    return f"python -m bench.{Path(sys.argv[0]).stem} " + shlex.join(args)


def clean(value: Any) -> Any:
    """JSON-safe: numpy to Python, NaN to null, inf to "inf" (configs hold clip=inf)."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return clean(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(clean(data), indent=1))
    tmp.replace(path)  # atomic: a stage's JSON exists only once it is complete


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def evaluated_test_tasks(family: str, task_ids: Sequence[str], eval_seed: int,
                         source: Path | str) -> list[Any]:
    """The held-out tasks an evaluation or probe ran on, rebuilt from its family and task
    seed; exits naming ``source`` when their ids differ from the recorded ``task_ids``."""
    from sim_envs.registry import make_family  # here: most users of this module need no sim

    tasks = make_family(family).sample_tasks(len(task_ids), "test", seed=eval_seed)
    if [t.task_id for t in tasks] != list(task_ids):
        raise SystemExit(f"{source}: its task ids are not the {family} test tasks for seed "
                         f"{eval_seed}; was the family changed since?")
    return tasks
