"""Walk family: the locomotion robot on flat ground, walking forward or backward.

The classic direction task of meta-RL (MAML's and ProMP's AntDir, HalfCheetahDir) on the
A1 of :mod:`sim_envs.locomotion`: same scene, observation, action, reward, termination and
success rule, with a smaller task space, so that the hidden thing to adapt to is mostly
the direction:

================ ======= =============== ==========================================
terrain          -       flat            always
heading          rad     0 or pi         forward (+x) or backward (-x), hidden
speed            m/s     0.5             always
friction         -       0.5-1.25        ground friction coefficient
payload          kg      0-3             mass added to the trunk (4.713 kg)
motor_strength   -       0.8-1.2         factor on every joint's torque limit
================ ======= =============== ==========================================

A policy that cannot tell the direction stands still (tracking reward
``exp(-0.5^2 / 0.25) = 0.37`` per step); one that walks the commanded way at 0.5 m/s gets
about 1 per step; walking the wrong way gets 0.02. A few episodes of reward tell the two
directions apart.

**Train / test split** (disjoint by construction, :meth:`WalkFamily.split_of`): a task is
*test* when its payload is above 2.25 kg (the heaviest quarter, a robot the policy never
carried in training); every other task is *train*. Both headings occur in both splits.

Parameter sets outside this space (another terrain, heading or speed) are rejected with a
``ValueError``; use the ``locomotion`` family for those.
"""

from __future__ import annotations

import math

import numpy as np

from sim_envs.locomotion import (
    MOTOR_STRENGTH_RANGE,
    LocomotionEnv,
    LocomotionFamily,
    LocomotionParams,
)
from sim_envs.tasks import Split, TaskParams, sample_uniform

#: The two commanded headings (rad): forward and backward along the world x axis.
HEADINGS = (0.0, math.pi)
#: The commanded speed of every walk task (m/s).
WALK_SPEED = 0.5
#: Friction range sampled for walk tasks (the low end of locomotion's is left out).
FRICTION_RANGE = (0.5, 1.25)
#: Payloads above this (kg) are held out for test.
HELD_OUT_PAYLOAD = 2.25


class WalkFamily(LocomotionFamily):
    """A1 on flat ground walking forward or backward (hidden) under varied dynamics."""

    name = "walk"
    params_type = LocomotionParams
    split_doc = (
        f"test: payload above {HELD_OUT_PAYLOAD} kg; train: payload up to {HELD_OUT_PAYLOAD} "
        "kg. Both headings (0 and pi) occur in both splits."
    )

    def split_of(self, params: TaskParams) -> Split:
        if not isinstance(params, LocomotionParams):
            raise ValueError(f"expected LocomotionParams, got {type(params).__name__}")
        if params.terrain != "flat":
            raise ValueError(f"walk tasks are on flat terrain, got {params.terrain!r}")
        if params.heading not in HEADINGS:
            raise ValueError(f"walk headings are 0 or pi, got {params.heading!r}")
        if params.speed != WALK_SPEED:
            raise ValueError(f"walk speed is {WALK_SPEED} m/s, got {params.speed!r}")
        return "test" if params.payload > HELD_OUT_PAYLOAD else "train"

    def _sample_params(self, rng: np.random.Generator, split: Split) -> TaskParams:
        payload_range = (HELD_OUT_PAYLOAD, 3.0) if split == "test" else (0.0, HELD_OUT_PAYLOAD)
        while True:  # the test range's lower bound itself is train: draw again (never in practice)
            params = LocomotionParams(
                terrain="flat",
                difficulty=0.0,
                terrain_seed=0,
                friction=sample_uniform(rng, FRICTION_RANGE),
                payload=sample_uniform(rng, payload_range),
                motor_strength=sample_uniform(rng, MOTOR_STRENGTH_RANGE),
                heading=HEADINGS[int(rng.integers(len(HEADINGS)))],
                speed=WALK_SPEED,
            )
            if self.split_of(params) == split:
                return params


class WalkEnv(LocomotionEnv):
    """:class:`~sim_envs.locomotion.LocomotionEnv` restricted to the walk family's tasks."""

    family_type = WalkFamily
