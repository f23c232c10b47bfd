"""Pool paired adaptation probes of several seeds on the same tasks (``bench/adaptation_probe.py``
outputs): each task's one-step gain averaged over the seeds, mean ± 95% CI over tasks, per
task group (the probe's held-out factor, or a task parameter with ``--by terrain``); also
each seed's mean, the interval over the seeds' means, and the success before and after.

    python -m bench.pool_probes PROBE.json [PROBE.json ...] [--by PARAM] --out OUT.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.common import command_line, evaluated_test_tasks, read_json, write_json
from metarobot.training.evaluate import mean_ci95


def task_values(run: dict, param: str, source: Path) -> list[str]:
    """Each probed task's value of the task parameter ``param``, from the tasks rebuilt
    with the probe's family and evaluation seed (their ids checked)."""
    tasks = evaluated_test_tasks(run["family"], run["task_ids"], run["eval_seed"], source)
    values = [t.params.to_dict() for t in tasks]
    if param not in values[0]:
        raise SystemExit(f"--by: {run['family']} tasks have no parameter {param!r}")
    return [str(v[param]) for v in values]


def pool(paths: list[Path], scale: float = 1.0, by: str | None = None) -> dict:
    runs = [read_json(p) for p in paths]
    if any(r["task_ids"] != runs[0]["task_ids"] for r in runs):
        raise SystemExit("the probes were not run on the same tasks (use the same --tasks "
                         "and --eval-seed)")
    groups = np.array(runs[0]["task_groups"] if by is None
                      else task_values(runs[0], by, paths[0]))
    k0, k1 = (runs[0]["scales"].index(s) for s in (0.0, scale))
    gain = np.array([np.subtract(r["returns"][k1], r["returns"][k0]) for r in runs])  # [S, T]
    before = np.array([r["success"][k0] for r in runs]).mean(0)
    success = np.array([r["success"][k1] for r in runs]).mean(0)
    out = {}
    for name in ["all", *sorted(set(groups))]:
        idx = np.ones(len(groups), bool) if name == "all" else groups == name
        seeds = gain[:, idx].mean(1)
        out[name] = {"tasks": int(idx.sum()), "gain_pooled": mean_ci95(gain[:, idx].mean(0)),
                     "gain_over_seeds": mean_ci95(seeds), "gain_per_seed": seeds.tolist(),
                     "success_before_step": float(before[idx].mean()),
                     "success_after_step": float(success[idx].mean())}
    return {"probes": [str(p) for p in paths], "scale": scale,
            "grouped_by": by or "held-out factor", "groups": out}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("probes", nargs="+", type=Path, help="adaptation_probe.json files")
    parser.add_argument("--scale", type=float, default=1.0, help="the step scale to compare with 0")
    parser.add_argument("--by", metavar="PARAM", help="group the tasks by this task parameter "
                        "(e.g. terrain) instead of the probe's held-out factor")
    parser.add_argument("--out", type=Path, required=True, help="JSON to write")
    args = parser.parse_args(argv)
    result = pool(args.probes, args.scale, args.by)
    for name, row in result["groups"].items():
        (pm, pc), (sm, sc) = row["gain_pooled"], row["gain_over_seeds"]
        print(f"{name:>8} ({row['tasks']} tasks): pooled {pm:+.1f} ± {pc:.1f}, over seeds "
              f"{sm:+.1f} ± {sc:.1f}, per seed {[round(v, 1) for v in row['gain_per_seed']]}, "
              f"success {row['success_before_step']:.2f} -> {row['success_after_step']:.2f}")
    write_json(args.out, {**result, "command": command_line(argv)})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
