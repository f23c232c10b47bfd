"""What locomotion's held-out stairs tasks ask of a blind robot: their step heights by
held-out factor.

The stairs target of issue 18 (success >= 0.3 on the hardest test terrain type) is read
on the test split's stairs tasks. This script draws a large sample of test tasks and
reports, per held-out factor (hard terrain, heavy payload, weak leg), the share of stairs
tasks and the distribution of their step heights (``0.05 + 0.18 d`` m, legged_gym's
rule), next to the heights the policies climb (``bench/terrain_probe.py``)::

    python -m bench.stairs_split --out bench/results/meta_focus/locomotion/stairs_split.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.common import command_line, machine_info, write_json
from sim_envs.locomotion import HELD_OUT_FACTORS, LocomotionFamily, held_out_factors
from sim_envs.terrain import step_height


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3000, help="test tasks drawn")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.09, 0.13],
                        help="step heights (m) to report the share at or below")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    args = parser.parse_args(argv)

    tasks = LocomotionFamily().sample_tasks(args.tasks, "test", seed=args.seed)
    stairs = [t.params for t in tasks if t.params.terrain == "stairs"]
    rows = {}
    for factor in HELD_OUT_FACTORS + ("all",):
        chosen = [p for p in stairs if factor == "all" or held_out_factors(p) == [factor]]
        h = np.array([step_height(p.difficulty) for p in chosen])
        rows[factor] = {
            "share_of_stairs": len(chosen) / len(stairs),
            "step_cm_min_q1_median_q3_max": (100 * np.percentile(h, [0, 25, 50, 75, 100])
                                             ).round(1).tolist(),
            **{f"share_at_most_{100 * t:g}cm": float(np.mean(h <= t))
               for t in args.thresholds}}
        print(f"{factor:8s} {rows[factor]}")
    write_json(args.out, {
        "command": command_line(), "machine": machine_info(), "tasks": args.tasks,
        "seed": args.seed, "stairs_share_of_test": len(stairs) / len(tasks), "by_factor": rows})


if __name__ == "__main__":
    main()
