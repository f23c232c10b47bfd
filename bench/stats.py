"""Statistics of the results JSON (``bench/results.py``'s): per-seed results, mean ± 95% CI
over test tasks or over seeds, paired gains, whether two intervals are apart, and the
iteration a family is judged at."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import read_json
from metarobot.training.evaluate import mean_ci95


def summary_rows(returns: Any, success: Any) -> list[dict[str, Any]]:
    rows = []
    for k, (r, s) in enumerate(zip(np.asarray(returns), np.asarray(success))):
        rm, rc = mean_ci95(r)
        sm, sc = mean_ci95(s)
        rows.append({"adapt_steps": k, "return_mean": rm, "return_ci95": rc,
                     "success_mean": sm, "success_ci95": sc})
    return rows


def ci_apart(a: tuple[float, float], b: tuple[float, float]) -> str:
    """'yes' when a's whole interval is above b's, 'reversed' when below, else 'no'."""
    (am, ac), (bm, bc) = a, b
    if any(v is None or not math.isfinite(v) for v in (am, ac, bm, bc)):
        return "n/a"
    if am - ac > bm + bc:
        return "yes"
    if am + ac < bm - bc:
        return "reversed"
    return "no"


def load_family(out: Path, family: str) -> dict[int, dict[str, Any]]:
    """seed -> {"meta": {it: json}, "baseline": {it: json}, "scratch": {it: json}}."""
    seeds: dict[int, dict[str, Any]] = {}
    for seed_dir in sorted((out / family).glob("seed*")):
        try:
            seed = int(seed_dir.name[4:])
        except ValueError:
            continue
        entry: dict[str, Any] = {"meta": {}, "baseline": {}, "scratch": {}, "dir": seed_dir}
        for kind in ("meta", "baseline", "scratch"):
            for path in seed_dir.glob(f"{kind}_it*.json"):
                data = read_json(path)
                entry[kind][int(data["iteration"])] = data
        if entry["meta"]:
            seeds[seed] = entry
    return seeds


def seed_stats(entry: dict[str, Any], iteration: int, kind: str, key: str,
               ) -> np.ndarray | None:
    """``[K+1, M]`` returns or success of one seed's meta or baseline JSON at ``iteration``."""
    data = entry[kind].get(iteration)
    if data is None:
        return None
    source = data["evaluation"] if kind == "meta" else data
    return np.asarray(source[key], dtype=np.float64)


def across(entries: list[dict[str, Any]], iteration: int, kind: str, key: str,
           ) -> list[tuple[float, float]] | None:
    """Per adaptation step (mean, CI95): over tasks for one seed, over the seeds' task
    means for several (only seeds that have this iteration)."""
    arrays = [a for e in entries if (a := seed_stats(e, iteration, kind, key)) is not None]
    if not arrays:
        return None
    if len(arrays) == 1:
        return [mean_ci95(row) for row in arrays[0]]
    per_seed = np.stack([a.mean(axis=1) for a in arrays])  # [S, K+1]
    return [mean_ci95(per_seed[:, k]) for k in range(per_seed.shape[1])]


def paired_gain(entries: list[dict[str, Any]], iteration: int, steps: int,
                ) -> tuple[float, float] | None:
    """Meta return after ``steps`` adaptation steps minus before, paired per task: (mean,
    CI95) over tasks for one seed, over the seeds' mean gains for several."""
    arrays = [a for e in entries
              if (a := seed_stats(e, iteration, "meta", "returns")) is not None
              and a.shape[0] > steps]
    if not arrays:
        return None
    if len(arrays) == 1:
        return mean_ci95(arrays[0][steps] - arrays[0][0])
    return mean_ci95(np.array([(a[steps] - a[0]).mean() for a in arrays]))


def with_baseline(seeds: dict[int, dict[str, Any]], iteration: int,
                  ) -> dict[int, dict[str, Any]]:
    """The seeds with both meta and baseline (a) results at ``iteration``: those the
    target is judged on."""
    return {seed: e for seed, e in seeds.items()
            if iteration in e["meta"] and iteration in e["baseline"]}


def final_iteration(entries: list[dict[str, Any]]) -> int:
    """The iteration of the headline comparison: the last one every seed has evaluated
    with baseline (a) too, else the last every seed has evaluated, else the last any seed
    has (meta-training can run ahead of the slower baselines)."""
    common = set.intersection(*(set(e["meta"]) for e in entries))
    compared = {it for it in common if all(it in e["baseline"] for e in entries)}
    if compared:
        return max(compared)
    return max(common) if common else max(max(e["meta"]) for e in entries)
