"""Memory of a sampler worker against the envs it holds, with and without visual meshes.

For each family and each ``--envs-per-worker`` value, one :class:`MultiTaskSampler` with
one worker process samples one episode on each of its envs (every env gets its own
training task, so scenes are built and reset), and the worker's resident memory (VmRSS,
``/proc/<pid>/status``) is read after the call. Each configuration runs twice in the same
run: as training makes envs (no ``render_mode``: the robots' visual meshes are not
loaded) and with ``render_mode="rgb_array"`` (the meshes loaded, as every env did before
2026-12-06). The slope of RSS against envs is the memory per env; the intercept is the
worker process itself (Python, numpy, PyBullet, and torch when the script that starts the
sampler imports it: ``spawn`` re-imports the main module in each worker).

Usage::

    python -m bench.bench_worker_memory                 # reach, grasp, locomotion; 1/5/10/20 envs

Writes ``bench/results/sampler/worker_memory.json`` and ``worker_memory.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import REPO, command_line, machine_info
from metarobot.core.policy import GaussianMLPPolicy
from metarobot.sampling.sampler import MultiTaskSampler
from sim_envs.registry import env_id, make_family

OUT_DIR = REPO / "bench" / "results" / "sampler"


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` (MB)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def measure(family: str, envs: int, render: bool) -> float:
    """RSS (MB) of one worker holding ``envs`` envs after one episode on each."""
    kwargs = {"render_mode": "rgb_array"} if render else {}
    tasks = make_family(family).sample_tasks(envs, "train", seed=0)
    with MultiTaskSampler(env_id(family), 1, envs, env_kwargs=kwargs) as sampler:
        model = GaussianMLPPolicy(sampler.obs_dim, sampler.act_dim)
        params = {k: v.detach().expand(envs, *v.shape) for k, v in model.init_params().items()}
        sampler.sample(model, params, tasks, 1, seed=0, generator=torch.Generator())
        return rss_mb(sampler.worker_pids[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=["reach", "grasp", "locomotion"])
    parser.add_argument("--envs-per-worker", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for family in args.families:
        for render in (False, True):
            for envs in args.envs_per_worker:
                rss = measure(family, envs, render)
                rows.append({"family": family, "visual_meshes": render, "envs": envs,
                             "worker_rss_mb": rss})
                print(f"{family:<10} visual meshes {'yes' if render else 'no ':<3} "
                      f"{envs:>3} envs: worker RSS {rss:7.0f} MB", flush=True)
    fits = []
    for family in args.families:
        for render in (False, True):
            pts = [(r["envs"], r["worker_rss_mb"]) for r in rows
                   if r["family"] == family and r["visual_meshes"] == render]
            slope, intercept = np.polyfit(*zip(*pts), 1)
            fits.append({"family": family, "visual_meshes": render,
                         "mb_per_env": float(slope), "worker_base_mb": float(intercept)})
            print(f"{family:<10} visual meshes {'yes' if render else 'no ':<3}: "
                  f"{slope:5.1f} MB per env, {intercept:5.0f} MB per worker", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"command": command_line(), "machine": machine_info(), "rows": rows,
              "fits": fits}
    path = args.out / "worker_memory.json"
    path.write_text(json.dumps(result, indent=2))
    plot(rows, args, args.out / "worker_memory.png")
    print(f"wrote {path}")


def plot(rows: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for family in args.families:
        for render, style in ((False, "-o"), (True, "--x")):
            pts = [(r["envs"], r["worker_rss_mb"]) for r in rows
                   if r["family"] == family and r["visual_meshes"] == render]
            ax.plot(*zip(*pts), style,
                    label=f"{family}{' (visual meshes)' if render else ''}")
    ax.set_xlabel("envs per worker")
    ax.set_ylabel("worker RSS (MB)")
    ax.set_title("Sampler worker memory")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
