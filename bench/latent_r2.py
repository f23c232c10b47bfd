"""Does a run's policy act on its per-episode latent? The share of each task's pre-update
return variance that a linear fit on its episodes' latents explains (R^2), per iteration.

Reads a run directory's ``episodes/iter_*.npz`` (``latent_0``, ``rew_0``, ``mask_0``:
written by the trainer for a policy with ``policy.context_noise``), averages R^2 over the
tasks of each batch and then over blocks of iterations, and saves the figures as JSON.
With C latent numbers and E episodes per task, a latent that does nothing gives
``C / (E - 1)`` on average (the chance level, printed beside).

Usage: ``python -m bench.latent_r2 RUN_DIR [RUN_DIR ...] --block 10 --out OUT.json``
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import command_line, write_json


def task_r2(latent: np.ndarray, returns: np.ndarray) -> float:
    """R^2 of ``returns [E]`` on ``latent [E, C]`` with an intercept (0 for equal returns)."""
    design = np.c_[np.ones(len(returns)), latent]
    coef, *_ = np.linalg.lstsq(design, returns, rcond=None)
    variance = returns.var()
    return 0.0 if variance <= 1e-9 else float(1.0 - (returns - design @ coef).var() / variance)


def run_r2(run_dir: Path) -> dict[int, float]:
    """Mean R^2 over the tasks of each iteration's pre-update batch, by iteration."""
    out = {}
    for path in sorted((run_dir / "episodes").glob("iter_*.npz")):
        data = np.load(path)
        if "latent_0" not in data:
            raise SystemExit(f"{path} has no latents: not a run with policy.context_noise")
        latent, returns = data["latent_0"], (data["rew_0"] * data["mask_0"]).sum(-1)
        out[int(path.stem.split("_")[1])] = float(np.mean(
            [task_r2(latent[m], returns[m]) for m in range(len(returns))]))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+", help="run directories")
    p.add_argument("--block", type=int, default=10, help="iterations per averaged block")
    p.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    args = p.parse_args(argv)
    if args.block < 1:
        p.error("--block must be >= 1")
    results: dict[str, Any] = {"command": command_line(argv), "runs": {}}
    for run in args.runs:
        by_iteration = run_r2(run)
        if not by_iteration:
            raise SystemExit(f"{run} has no episodes/iter_*.npz")
        first = np.load(next((run / "episodes").glob("iter_*.npz")))["latent_0"]
        chance = first.shape[2] / (first.shape[1] - 1)
        blocks = {}
        for start in range(0, max(by_iteration) + 1, args.block):
            values = [v for it, v in by_iteration.items() if start <= it < start + args.block]
            if values:
                blocks[f"{start}-{start + args.block - 1}"] = float(np.mean(values))
        results["runs"][str(run)] = {"chance": chance, "blocks": blocks,
                                     "by_iteration": by_iteration}
        print(f"{run}: chance {chance:.2f}; "
              + ", ".join(f"{k}: {v:.2f}" for k, v in blocks.items()), flush=True)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
