"""Success of a locomotion policy per terrain type and difficulty, everything else fixed.

The held-out evaluation mixes terrain with payload, motor strength and leg damage. This
probe isolates the terrain: for each ``(terrain, difficulty)`` it runs ``--episodes``
deterministic episodes (action mean, no adaptation) of the run's meta-policy on tasks that
differ only in their terrain seed (payload 1 kg centred, motor strength 1, no damaged leg,
friction 1), and reports success, fall rate, return and the distance walked along the
command. It says whether a policy can climb stairs at all, and from which step height on it
cannot. Stairs and slopes go up or down (by terrain seed): their success is also given per
direction. On flat ground it measures the feet's lift: each foot's 95th-percentile height
above the ground over the episode (m), the clearance a blind robot has against a step.

Usage::

    python -m bench.terrain_probe bench/results/meta/locomotion/seed0/saved/meta/it00080 \\
        --out bench/results/terrain_probe/locomotion_dyn_seed0_it00080.json

Writes the JSON (with the command, commit and machine) and prints a table.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np

from bench.common import command_line, machine_info, write_json
from bench.videos import record_episode
from metarobot.training.evaluate import load_trained_policy
from sim_envs.locomotion import LocomotionParams
from sim_envs.registry import env_id, make_family
from sim_envs.robots.a1 import FOOT_RADIUS
from sim_envs.terrain import CELL_SIZE, NUM_CELLS, step_height, terrain_heights

#: Stairs up to 0.8 are training difficulties (5-19.4 cm steps), 1 a held-out one (23 cm).
DEFAULT_CASES = ("flat:0", "stairs:0", "stairs:0.2", "stairs:0.4", "stairs:0.6", "stairs:0.8",
                 "stairs:1", "rough:0.5", "slopes:0.5", "obstacles:0.5")


def goes_up(terrain: str, difficulty: float, seed: int) -> bool | None:
    """Whether a stairs or slopes map rises away from the platform (``None``: neither)."""
    if terrain not in ("stairs", "slopes") or difficulty == 0.0 and terrain == "slopes":
        return None
    heights = terrain_heights(terrain, difficulty, seed)
    centre = (NUM_CELLS - 1) // 2
    return bool(heights[centre, centre + int(round(1.0 / CELL_SIZE))] > 0)


def feet_recorder(feet: list[list[float]]) -> Callable[[Any], None]:
    """A step callback appending the four feet's heights (m, flat ground) to ``feet``."""
    def record(env: Any) -> None:
        robot = env.unwrapped.robot
        feet.append(list(robot.foot_states()[0][:, 2] - FOOT_RADIUS))
    return record


def probe_case(env: gymnasium.Env, policy: Any, terrain: str, difficulty: float,
               episodes: int) -> dict[str, Any]:
    """``episodes`` deterministic episodes on tasks ``(terrain, difficulty, terrain_seed=i)``."""
    family = make_family("locomotion")
    rows, up, lifts = [], [], []
    for i in range(episodes):
        params = LocomotionParams(terrain=terrain, difficulty=difficulty, terrain_seed=i,
                                  friction=1.0, payload=1.0, payload_x=0.0, payload_y=0.0,
                                  motor_strength=1.0, damaged_leg="none", leg_strength=1.0)
        env.unwrapped.set_task(family.make_task(params))
        feet: list[list[float]] = []
        _, total, info = record_episode(env, policy.model, policy.params, seed=i,
                                        on_step=feet_recorder(feet) if terrain == "flat"
                                        else None)
        rows.append((total, float(info["success"]), float(info["fall"]), float(info["progress"])))
        up.append(goes_up(terrain, difficulty, i))
        if feet:
            lifts.append(float(np.percentile(np.array(feet), 95, axis=0).mean()))
    ret, success, fall, progress = np.array(rows).T
    out = {"terrain": terrain, "difficulty": difficulty, "episodes": episodes,
           "step_height_m": step_height(difficulty) if terrain == "stairs" else None,
           "success": float(success.mean()), "fall": float(fall.mean()),
           "return": float(ret.mean()), "progress_m": float(progress.mean()),
           "foot_lift_m": float(np.mean(lifts)) if lifts else None}
    if up[0] is not None:
        for name, want in (("up", True), ("down", False)):
            picked = [s for s, u in zip(success, up, strict=True) if u is want]
            out[f"success_{name}"] = float(np.mean(picked)) if picked else None
            out[f"episodes_{name}"] = len(picked)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="run directory or saved stage of a locomotion run")
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES),
                        metavar="TERRAIN:DIFFICULTY")
    parser.add_argument("--episodes", type=int, default=6, help="episodes (terrain seeds) per case")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()

    policy = load_trained_policy(args.run)
    if policy.config.family != "locomotion":
        raise SystemExit(f"{args.run} is a {policy.config.family} run, not locomotion")
    env = gymnasium.make(env_id("locomotion"), **policy.config.env_kwargs)
    results = []
    print("| terrain | difficulty | step (m) | success | up / down | fall | return | "
          "distance (m) | foot lift (m) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case in args.cases:
        terrain, difficulty = case.split(":")
        r = probe_case(env, policy, terrain, float(difficulty), args.episodes)
        results.append(r)
        step = f"{r['step_height_m']:.3f}" if r["step_height_m"] is not None else "-"
        split = (f"{r['success_up']:.2f} ({r['episodes_up']}) / {r['success_down']:.2f} "
                 f"({r['episodes_down']})" if r.get("episodes_up") and r.get("episodes_down")
                 else "-")
        lift = f"{r['foot_lift_m']:.3f}" if r["foot_lift_m"] is not None else "-"
        print(f"| {terrain} | {r['difficulty']:.1f} | {step} | {r['success']:.2f} | {split} | "
              f"{r['fall']:.2f} | {r['return']:.1f} | {r['progress_m']:.2f} | {lift} |",
              flush=True)
    env.close()
    write_json(args.out, {"run": str(args.run), "iteration": policy.iteration,
                          "env_steps": policy.env_steps, "cases": results,
                          "command": command_line(), "machine": machine_info()})


if __name__ == "__main__":
    main()
