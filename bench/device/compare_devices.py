"""Compare two training runs (e.g. the same config trained with --device cpu and cuda).

Reads each run directory's ``log.jsonl`` (per-iteration scalars) and ``checkpoint.pt``
(policy parameters, normaliser, optimiser and algorithm state) and reports, per log scalar
and per checkpoint tensor, the largest absolute and relative difference. Timings
(``time/*``, ``time``) are left out. Prints a summary and optionally writes the whole
comparison as JSON::

    python bench/device/compare_devices.py RUN_CPU RUN_CUDA --out cmp.json

The relative difference of two values a, b is |a - b| / max(|a|, |b|) (0 where both are 0;
2 for opposite signs); ``rel_norm`` is ||a - b|| / max(||a||, ||b||) over a whole tensor.
Exit status: 0, or 1 with ``--fail-above REL`` when a policy parameter or a logged return
differs by more than REL (relative).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Checkpoint sections compared, leaf by leaf.
SECTIONS = ("model", "normalizer", "optimizer", "algo_state")
#: Log scalars summarised first (and checked by --fail-above).
RETURN_KEYS = ("return/pre", "return/post")


def read_log(run: Path) -> dict[int, dict[str, float]]:
    """iteration -> scalars (event records and timings dropped)."""
    rows: dict[int, dict[str, float]] = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "iteration" not in record:
            continue
        rows[int(record["iteration"])] = {
            k: float(v) for k, v in record.items()
            if k not in ("iteration", "time") and not k.startswith("time/")
            and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return rows


def leaves(obj: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Flatten nested dicts / lists / tuples of tensors and numbers into name -> array."""
    out: dict[str, np.ndarray] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj.detach().to("cpu", torch.float64).numpy().reshape(-1)
    elif isinstance(obj, np.ndarray) and obj.dtype.kind in "fiub":
        out[prefix] = obj.astype(np.float64).reshape(-1)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix] = np.array([float(obj)])
    elif isinstance(obj, dict):
        for key, value in obj.items():
            out.update(leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            out.update(leaves(value, f"{prefix}.{i}" if prefix else str(i)))
    return out


def diff(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Largest absolute and relative difference of two equally shaped arrays."""
    if a.shape != b.shape:
        return {"shape_a": list(a.shape), "shape_b": list(b.shape), "max_abs": math.inf,
                "max_rel": math.inf}
    both_nan = np.isnan(a) & np.isnan(b)
    abs_diff = np.where(both_nan, 0.0, np.abs(a - b))
    scale = np.maximum(np.abs(a), np.abs(b))
    rel = np.divide(abs_diff, scale, out=np.zeros_like(abs_diff), where=scale > 0)
    rel = np.where(np.isnan(abs_diff), math.inf, rel)
    norm = max(float(np.linalg.norm(a)), float(np.linalg.norm(b)))
    rel_norm = float(np.linalg.norm(abs_diff)) / norm if norm > 0 else 0.0
    max_abs = float(np.nan_to_num(abs_diff, nan=math.inf).max(initial=0))
    return {"n": int(a.size), "max_abs": max_abs,
            "max_rel": float(rel.max(initial=0)), "rel_norm": rel_norm,
            "identical": bool(np.array_equal(a, b))}


def compare_logs(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]]
                 ) -> dict[str, Any]:
    common = sorted(set(a) & set(b))
    keys = sorted(set().union(*(a[i].keys() & b[i].keys() for i in common))) if common else []
    result: dict[str, Any] = {}
    for key in keys:
        its = [i for i in common if key in a[i] and key in b[i]]
        va = np.array([a[i][key] for i in its])
        vb = np.array([b[i][key] for i in its])
        entry = diff(va, vb)
        differing = [i for i, x, y in zip(its, va, vb) if x != y]
        entry["first_differing_iteration"] = differing[0] if differing else None
        entry["a"] = va.tolist()
        entry["b"] = vb.tolist()
        result[key] = entry
    return result


def compare_checkpoints(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for section in SECTIONS:
        la, lb = leaves(a.get(section), section), leaves(b.get(section), section)
        for name in sorted(la.keys() | lb.keys()):
            if name in la and name in lb:
                result[name] = diff(la[name], lb[name])
            else:
                result[name] = {"missing_in": "b" if name in la else "a"}
    return result


def summarise(log: dict[str, Any], ckpt: dict[str, Any]) -> dict[str, Any]:
    params = {k: v for k, v in ckpt.items() if k.startswith("model.params.") and "max_abs" in v}
    returns = {k: log[k] for k in RETURN_KEYS if k in log}

    def worst(entries: dict[str, Any], field: str) -> float | None:
        values = [e[field] for e in entries.values() if field in e]
        return max(values) if values else None

    return {
        "params_max_abs": worst(params, "max_abs"),
        "params_max_rel": worst(params, "max_rel"),
        "params_rel_norm": worst(params, "rel_norm"),
        "params_identical": all(e.get("identical", False) for e in params.values()),
        "returns_max_abs": worst(returns, "max_abs"),
        "returns_max_rel": worst(returns, "max_rel"),
        "log_max_rel": worst(log, "max_rel"),
        "log_identical": all(e.get("identical", False) for e in log.values()),
        "first_differing_iteration": min(
            (e["first_differing_iteration"] for e in log.values()
             if e.get("first_differing_iteration") is not None), default=None),
    }


def compare(run_a: Path, run_b: Path) -> dict[str, Any]:
    log_a, log_b = read_log(run_a), read_log(run_b)
    ckpt_a = torch.load(run_a / "checkpoint.pt", map_location="cpu", weights_only=False)
    ckpt_b = torch.load(run_b / "checkpoint.pt", map_location="cpu", weights_only=False)
    config_diff = {k: [ckpt_a["config"].get(k), ckpt_b["config"].get(k)]
                   for k in sorted(ckpt_a["config"].keys() | ckpt_b["config"].keys())
                   if ckpt_a["config"].get(k) != ckpt_b["config"].get(k)}
    log = compare_logs(log_a, log_b)
    ckpt = compare_checkpoints(ckpt_a, ckpt_b)
    return {
        "runs": [str(run_a), str(run_b)],
        "iterations": [len(log_a), len(log_b)],
        "checkpoint_iteration": [ckpt_a["iteration"], ckpt_b["iteration"]],
        "config_differences": config_diff,
        "summary": summarise(log, ckpt),
        "log": log,
        "checkpoint": ckpt,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--out", type=Path, help="write the full comparison as JSON here")
    parser.add_argument("--fail-above", type=float, metavar="REL",
                        help="exit 1 if params or returns differ by more than REL (relative)")
    args = parser.parse_args()
    result = compare(args.run_a, args.run_b)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    s = result["summary"]
    print(f"runs: {result['runs'][0]} vs {result['runs'][1]}; iterations "
          f"{result['iterations']}; config differences {result['config_differences']}")
    for key in RETURN_KEYS:
        if key in result["log"]:
            e = result["log"][key]
            print(f"  {key:12s} max_abs={e['max_abs']:.3g} max_rel={e['max_rel']:.3g} "
                  f"first differing iteration={e['first_differing_iteration']}")
    for name, e in result["checkpoint"].items():
        if name.startswith("model.params.") and "max_abs" in e:
            print(f"  {name:32s} max_abs={e['max_abs']:.3g} max_rel={e['max_rel']:.3g} "
                  f"rel_norm={e['rel_norm']:.3g}")
    print("summary: " + json.dumps(s))
    if args.fail_above is not None:
        worst = max(v for v in (s["params_max_rel"], s["returns_max_rel"]) if v is not None)
        if worst > args.fail_above:
            print(f"FAIL: relative difference {worst:.3g} > {args.fail_above}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
