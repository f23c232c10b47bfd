"""bench/terrain_probe.py's per-direction split and foot-lift measurement."""

from __future__ import annotations

import gymnasium
import numpy as np

from bench.terrain_probe import feet_recorder, goes_up
from sim_envs.registry import env_id
from sim_envs.terrain import terrain_heights


def test_direction_is_the_sign_of_the_first_rings_and_only_for_stairs_and_slopes():
    seen = set()
    for seed in range(8):
        for terrain in ("stairs", "slopes"):
            heights = terrain_heights(terrain, 0.5, seed)
            inner = heights[30:98, 30:98]  # up to 3.4 m out: the first steps, no corner pins
            up = goes_up(terrain, 0.5, seed)
            assert up == (inner.max() > 0) and up != (inner.min() < 0)
            seen.add(up)
    assert seen == {True, False}  # both directions occur
    assert goes_up("flat", 0.0, 0) is None and goes_up("rough", 0.5, 0) is None


def test_feet_recorder_reads_four_foot_heights_near_zero_when_standing():
    env = gymnasium.make(env_id("locomotion"))
    env.reset(seed=0)
    feet: list[list[float]] = []
    record = feet_recorder(feet)
    for _ in range(20):
        env.step(np.zeros(12, dtype=np.float32))
        record(env)
    env.close()
    heights = np.array(feet)
    assert heights.shape == (20, 4)
    # Standing on flat ground, every foot sphere rests on it: its centre one radius up.
    assert np.all(np.abs(heights[-5:]) < 0.01), heights[-5:]
