"""Locomotion family: an A1 quadruped walking on generated terrain at a commanded velocity.

Scene: one A1 (:mod:`sim_envs.robots.a1`) on one 12.7 m square heightfield
(:mod:`sim_envs.terrain`), created once per env and reshaped in place for each task.

**Task parameters** (:class:`LocomotionParams`, all hidden from the policy by default):

================ ======= =========== ==============================================
terrain          -       5 types     flat, rough, slopes, stairs, obstacles
difficulty       -       0-1         scales the terrain (ignored for flat)
terrain_seed     -       0-2^31-1    seeds the terrain's random parts
friction         -       0.3-1.25    ground friction coefficient
payload          kg      0-3         mass added to the trunk (4.713 kg)
motor_strength   -       0.8-1.2     factor on every joint's torque limit
heading          rad     -pi-pi      commanded walking direction (world frame)
speed            m/s     0.2-1.0     commanded walking speed
================ ======= =========== ==============================================

The command (heading, speed) is the classic hidden direction / velocity meta-RL task. With
``LocomotionEnv(observe_command=True)`` (also ``gymnasium.make(..., observe_command=True)``)
the observation ends with the commanded velocity in the yaw-aligned base frame.

**Train / test split** (disjoint by construction, :meth:`LocomotionFamily.split_of`):
a task is *test* when its heading lies within pi/16 of a diagonal (±pi/4, ±3pi/4: four
held-out sectors, a quarter of all headings) **or** its terrain is not flat and its
difficulty is above 0.8; every other task is *train*. Sampling draws from the full
parameter space and keeps draws of the requested split.

**Timing**: physics step 1/200 s, 4 physics steps per env step, so 50 Hz control; the
registered env stops after 200 steps (4 s, TimeLimit truncation).

**Observation** (float32, proprioceptive only), 45 values, 2 more with the command and 2
more with the gait generator:

========= ============================================================ =========
0:3       gravity direction in the base frame (unit vector)             -
3:6       base linear velocity in the base frame                         m/s
6:9       base angular velocity in the base frame                        rad/s
9:21      joint positions minus the standing pose                        rad
21:33     joint velocities                                               rad/s
33:45     previous action (clipped)                                      -
45:47     commanded velocity (x, y) in the yaw-aligned base frame        m/s
          (only with ``observe_command=True``)
next 2    sin and cos of the gait phase (only with ``gait_generator=True``) -
========= ============================================================ =========

**Action**: 12 values in [-1, 1], joint position targets
``STANDING_POSE + ACTION_SCALE * action`` with ``ACTION_SCALE`` 0.2 rad (hip), 0.4 rad
(thigh, calf), tracked by torque-limited position motors (:mod:`sim_envs.robots.a1`).

**Gait generator** (``gait_generator=True``): the action is added to a trot in place,
as in the policies that modulate a periodic trajectory generator (Iscen et al. 2018,
PMTG; Lee et al. 2020). A gait phase advances at ``GAIT_FREQUENCY`` (2 Hz, one stride per
25 steps) from 0 at each reset; the diagonal pairs FR+RL and FL+RR swing in turn, each leg
while ``s = sin(phase + leg offset) > 0``, by ``+GAIT_LIFT * s`` on the thigh and
``-2 * GAIT_LIFT * s`` on the calf, which raises the foot about 6 cm straight up
(:func:`trot_offsets`). The targets are then ``STANDING_POSE + trot_offsets(phase) +
ACTION_SCALE * action``. The generator alone steps in place without moving; adding a
thigh offset that follows ``cos(phase + leg offset)`` walks forward or backward at 0.2-0.5
m/s on flat ground (``tests/test_locomotion.py``). Measured, it does not speed up PPO on
one walk task, which walks within 100k env steps either way (``bench/gait_learnability.py``);
it gives a regular trot from the first episode. A controller running such a policy must
run the same generator (the bundle's manifest carries the option).

**Reward** per step: ``exp(-|v_xy - v_cmd|^2 / 0.25)`` (velocity tracking, world frame,
v_cmd = speed x (cos heading, sin heading)) ``- 0.001 * sum_j |tau_j * qdot_j|`` (mechanical
power in W at the last physics step) ``- 5`` on a fall.

**Termination**: a fall, i.e. the trunk touches the ground, tilts more than 1 rad from
upright, or its base is less than 0.12 m above the lowest ground within 0.2 m (standing
height 0.27 m). Also (unreachable within 200 steps) leaving the terrain square.

**Success** (``info["success"]``): latched at the first step where the base has moved at
least half the commanded distance along the heading, ``0.5 * speed * 4 s``, without a fall
before. Falls always terminate; a fall after success ends the episode but does not revoke it.

Each episode starts on the flat platform at the origin, yaw 0, joints at the standing pose
plus uniform noise of ±0.05 rad.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pybullet
from gymnasium import spaces

from sim_envs.base_env import MetaEnv
from sim_envs.robots.a1 import A1, NUM_JOINTS, STANDING_HEIGHT, STANDING_POSE
from sim_envs.tasks import ParamSpec, Split, Task, TaskFamily, TaskParams, param, sample_uniform
from sim_envs.terrain import TERRAIN_TYPES, Terrain, terrain_heights

#: Physics time step (s).
PHYSICS_DT = 1.0 / 200.0
#: Physics steps per env step (50 Hz control).
SUBSTEPS = 4
#: Env step duration (s).
CONTROL_DT = PHYSICS_DT * SUBSTEPS
#: Episode duration (s) used by the success rule: 200 steps of the registered env.
EPISODE_SECONDS = 200 * CONTROL_DT
#: Fraction of the commanded distance (speed x episode duration) that counts as success.
SUCCESS_FRACTION = 0.5
TRACKING_SIGMA = 0.25  # (m/s)^2
ENERGY_WEIGHT = 0.001  # reward per W
FALL_PENALTY = 5.0
MAX_TILT = 1.0  # rad
#: A base lower than this (m) above the lowest ground within GROUND_WINDOW (m) has fallen.
#: The lowest ground, so that a base over a step edge is measured from the lower step.
MIN_BASE_HEIGHT = 0.12
GROUND_WINDOW = 0.2
JOINT_NOISE = 0.05  # rad
#: Start position of the base (m): over the platform, a few mm above standing height.
SPAWN_POSITION = (0.0, 0.0, STANDING_HEIGHT + 0.01)
#: Held-out heading sectors: within this angle (rad) of a diagonal.
HELD_OUT_HEADING_HALF_WIDTH = math.pi / 16
#: Terrain difficulties above this (non-flat terrain) are held out for test.
HELD_OUT_DIFFICULTY = 0.8
#: Range of the factor on every joint's torque limit (both splits; walk's too).
MOTOR_STRENGTH_RANGE = (0.8, 1.2)

#: Gait generator (``gait_generator=True``): stride frequency (Hz) and the thigh flexion
#: (rad) at mid-swing (the calf flexes twice as much, the foot rises about 6 cm).
GAIT_FREQUENCY = 2.0
GAIT_LIFT = 0.2
#: Phase offset (rad) of each leg, FR, FL, RR, RL: the diagonal pairs trot in turn.
GAIT_LEG_OFFSETS = np.array([0.0, math.pi, math.pi, 0.0])

_OBS_PROPRIO = 3 + 3 + 3 + NUM_JOINTS * 3
_OBS_COMMAND = 2
_OBS_GAIT = 2


@dataclass(frozen=True)
class LocomotionParams(TaskParams):
    """Physical parameters of one locomotion task (see the module docstring)."""

    terrain: str = param(ParamSpec(choices=TERRAIN_TYPES, doc="terrain type"))
    difficulty: float = param(ParamSpec(
        low=0.0, high=1.0, doc="terrain difficulty d (slope 0.4d, step 0.05+0.18d m, ...)"))
    terrain_seed: int = param(ParamSpec(low=0, high=2**31 - 1, doc="seed of the terrain",
                                        feature=False))
    friction: float = param(ParamSpec(low=0.3, high=1.25, doc="ground friction coefficient"))
    payload: float = param(ParamSpec(unit="kg", low=0.0, high=3.0, doc="mass added to trunk"))
    motor_strength: float = param(ParamSpec(
        low=MOTOR_STRENGTH_RANGE[0], high=MOTOR_STRENGTH_RANGE[1],
        doc="factor on every joint's torque limit"))
    heading: float = param(ParamSpec(
        unit="rad", low=-math.pi, high=math.pi,
        doc="commanded heading, world frame (observable with observe_command=True)"))
    speed: float = param(ParamSpec(
        unit="m/s", low=0.2, high=1.0,
        doc="commanded speed (observable with observe_command=True)"))

    def __post_init__(self) -> None:
        super().__post_init__()
        seed = self.terrain_seed
        if isinstance(seed, bool) or not float(seed).is_integer():
            raise ValueError(f"LocomotionParams.terrain_seed must be an integer, got {seed!r}")
        object.__setattr__(self, "terrain_seed", int(seed))


def trot_offsets(phase: float) -> np.ndarray:
    """Joint target offsets (rad, ``(12,)``) of the gait generator at gait phase ``phase``.

    A leg swings while ``s = sin(phase + its offset) > 0`` (thigh ``+GAIT_LIFT * s``, calf
    ``-2 * GAIT_LIFT * s``: the foot goes straight up and back down) and stands otherwise.
    """
    swing = GAIT_LIFT * np.maximum(np.sin(phase + GAIT_LEG_OFFSETS), 0.0)
    return np.stack([np.zeros(4), swing, -2.0 * swing], axis=1).reshape(NUM_JOINTS)


def heading_held_out(heading: float) -> bool:
    """True if ``heading`` (rad) lies in a held-out sector (within pi/16 of a diagonal)."""
    offset = (heading - math.pi / 4) % (math.pi / 2)
    return min(offset, math.pi / 2 - offset) < HELD_OUT_HEADING_HALF_WIDTH


class LocomotionFamily(TaskFamily):
    """A1 walking tasks: terrain, ground friction, payload, motor strength and command."""

    name = "locomotion"
    params_type = LocomotionParams
    split_doc = (
        "test: heading within pi/16 of a diagonal (+-pi/4, +-3pi/4), or non-flat terrain "
        "with difficulty > 0.8; train: everything else (headings away from the diagonals, "
        "difficulty <= 0.8 or flat terrain)."
    )

    def split_of(self, params: TaskParams) -> Split:
        if not isinstance(params, LocomotionParams):
            raise ValueError(f"expected LocomotionParams, got {type(params).__name__}")
        hard_terrain = params.terrain != "flat" and params.difficulty > HELD_OUT_DIFFICULTY
        return "test" if heading_held_out(params.heading) or hard_terrain else "train"

    def _sample_params(self, rng: np.random.Generator, split: Split) -> TaskParams:
        # Rejection sampling over the full space: about 63% of draws are train, 37% test.
        while True:
            terrain = TERRAIN_TYPES[int(rng.integers(len(TERRAIN_TYPES)))]
            difficulty = sample_uniform(rng, (0.0, 1.0))
            params = LocomotionParams(
                terrain=terrain,
                difficulty=0.0 if terrain == "flat" else difficulty,
                terrain_seed=int(rng.integers(2**31 - 1)),
                friction=sample_uniform(rng, (0.3, 1.25)),
                payload=sample_uniform(rng, (0.0, 3.0)),
                motor_strength=sample_uniform(rng, MOTOR_STRENGTH_RANGE),
                heading=sample_uniform(rng, (-math.pi, math.pi)),
                speed=sample_uniform(rng, (0.2, 1.0)),
            )
            if self.split_of(params) == split:
                return params


class LocomotionEnv(MetaEnv):
    """A1 on generated terrain tracking a commanded velocity (see the module docstring).

    Args:
        task: initial task (default: the first train task of seed 0).
        render_mode: ``None`` or ``"rgb_array"`` (camera follows the robot).
        observe_command: append the commanded velocity to the observation (2 values).
        gait_generator: add the action to a trot in place (see the module docstring) and
            append the sin and cos of the gait phase to the observation (2 values).
    """

    family_type = LocomotionFamily
    camera = ((0.0, 0.0, 0.2), 1.3, 40.0, -22.0)
    substeps = SUBSTEPS

    def __init__(self, task: Task | None = None, render_mode: str | None = None,
                 observe_command: bool = False, gait_generator: bool = False) -> None:
        for name, value in (("observe_command", observe_command),
                            ("gait_generator", gait_generator)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be a bool, got {value!r}")
        self.observe_command = observe_command
        self.gait_generator = gait_generator
        size = (_OBS_PROPRIO + (_OBS_COMMAND if observe_command else 0)
                + (_OBS_GAIT if gait_generator else 0))
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(size,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(NUM_JOINTS,), dtype=np.float32)
        self._terrain_key: tuple[Any, ...] | None = None
        super().__init__(task=task, render_mode=render_mode)

    # ----------------------------------------------------------------- hooks
    def _build_scene(self) -> None:
        c = self.client
        # Per-step calls go to pybullet directly (BulletClient wraps each call).
        self._client_id: int = c._client
        c.setGravity(0.0, 0.0, -9.81)
        c.setTimeStep(PHYSICS_DT)
        self.terrain = Terrain(c)
        self.robot = A1(c, SPAWN_POSITION)
        self._prev_action = np.zeros(NUM_JOINTS)
        self._phase = 0.0
        self._command = np.zeros(2)
        self._success_distance = 0.0
        self._read_state()

    def _apply_task(self, task: Task) -> None:
        p: LocomotionParams = task.params  # type: ignore[assignment]
        # Flat maps are all equal; other maps depend on (type, difficulty, seed).
        key = ("flat",) if p.terrain == "flat" else (p.terrain, p.difficulty, p.terrain_seed)
        if key != self._terrain_key:
            self.terrain.set_heights(terrain_heights(p.terrain, p.difficulty, p.terrain_seed))
            self._terrain_key = key
        self.terrain.set_friction(p.friction)
        self.robot.set_payload(p.payload)
        self.robot.set_motor_strength(p.motor_strength)
        self._command = np.array([p.speed * math.cos(p.heading), p.speed * math.sin(p.heading)])
        self._heading_dir = (math.cos(p.heading), math.sin(p.heading))
        self._success_distance = SUCCESS_FRACTION * p.speed * EPISODE_SECONDS
        # The saved state (taken right after this hook) starts from the spawn pose.
        self.robot.reset_pose(SPAWN_POSITION, STANDING_POSE)
        self.robot.command_positions(STANDING_POSE)

    def _reset_episode(self) -> None:
        noise = self.np_random.uniform(-JOINT_NOISE, JOINT_NOISE, size=NUM_JOINTS)
        self.robot.reset_pose(SPAWN_POSITION, STANDING_POSE + noise)
        self.robot.command_positions(STANDING_POSE)
        self._prev_action = np.zeros(NUM_JOINTS)
        self._phase = 0.0
        self._read_state()

    def _read_state(self) -> None:
        self._pos, self._rot, self._lin, self._ang = self.robot.base_state()
        self._q, self._qd, self._tau = self.robot.joint_states()

    def _observe(self) -> np.ndarray:
        rot_t = self._rot.T
        parts = [-self._rot[2], rot_t @ self._lin, rot_t @ self._ang,
                 self._q - STANDING_POSE, self._qd, self._prev_action]
        if self.observe_command:
            yaw = math.atan2(self._rot[1, 0], self._rot[0, 0])
            cos_y, sin_y = math.cos(yaw), math.sin(yaw)
            cx, cy = self._command
            parts.append(np.array([cos_y * cx + sin_y * cy, -sin_y * cx + cos_y * cy]))
        if self.gait_generator:
            parts.append(np.array([math.sin(self._phase), math.cos(self._phase)]))
        return np.concatenate(parts).astype(np.float32)

    def _step(self, action: np.ndarray) -> tuple[float, bool, bool, dict[str, Any]]:
        cid = self._client_id
        targets = self.robot.action_to_targets(action)
        if self.gait_generator:
            targets = np.clip(targets + trot_offsets(self._phase),
                              self.robot.joint_lower, self.robot.joint_upper)
            self._phase = (self._phase + 2.0 * math.pi * GAIT_FREQUENCY * CONTROL_DT) % (
                2.0 * math.pi)
        self.robot.command_positions(targets)
        for _ in range(SUBSTEPS):
            pybullet.stepSimulation(physicsClientId=cid)
        self._prev_action = action
        self._read_state()

        vx_err = self._lin[0] - self._command[0]
        vy_err = self._lin[1] - self._command[1]
        tracking = math.exp(-(vx_err * vx_err + vy_err * vy_err) / TRACKING_SIGMA)
        power = float(np.abs(self._tau * self._qd).sum())
        x, y, z = float(self._pos[0]), float(self._pos[1]), float(self._pos[2])
        terrain = self.terrain
        fell = (bool(self._rot[2, 2] < math.cos(MAX_TILT))
                # Only look up the nearby ground when the map's highest point is not
                # already far enough below the base.
                or (z - terrain.max_height < MIN_BASE_HEIGHT
                    and z - terrain.lowest_height_near(x, y, GROUND_WINDOW) < MIN_BASE_HEIGHT)
                or bool(pybullet.getContactPoints(
                    bodyA=self.robot.body_id, bodyB=terrain.body_id, linkIndexA=-1,
                    physicsClientId=cid)))
        reward = tracking - ENERGY_WEIGHT * power - (FALL_PENALTY if fell else 0.0)

        progress = ((x - SPAWN_POSITION[0]) * self._heading_dir[0]
                    + (y - SPAWN_POSITION[1]) * self._heading_dir[1])
        limit = self.terrain.half_extent - 0.5
        out_of_bounds = abs(x) > limit or abs(y) > limit
        success = not fell and progress >= self._success_distance
        info = {"fall": fell, "progress": progress, "tracking_reward": tracking,
                "power": power}
        return reward, fell or out_of_bounds, success, info

    # ----------------------------------------------------------------- rendering
    def render(self) -> np.ndarray | None:
        """An ``(H, W, 3)`` uint8 image with the camera following the base, or ``None``."""
        _, distance, yaw, pitch = type(self).camera
        x, y, z = (float(v) for v in self._pos)
        self.camera = ((x, y, z - 0.1), distance, yaw, pitch)
        return super().render()
