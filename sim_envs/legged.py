"""The A1 on generated terrain: the scene, dynamics knobs and physics step that the
legged families (:mod:`sim_envs.locomotion`, :mod:`sim_envs.walk`) share.

:class:`LeggedEnv` owns one A1 (:mod:`sim_envs.robots.a1`) on one 12.7 m square
heightfield (:mod:`sim_envs.terrain`) and implements everything but the task's command,
reward and success rule:

* the dynamics of a task (:class:`Dynamics`): terrain, ground friction, a payload at an
  offset on the trunk, motor strength and a weakened leg;
* the physics step (4 steps of 1/200 s, so 50 Hz control), the optional gait generator,
  proprioception, foot contacts, thigh/calf collisions and the fall rule.

**Timing**: physics step 1/200 s, 4 physics steps per env step; the registered envs stop
after 200 steps (4 s, TimeLimit truncation).

**Proprioception** (float32, 45 values, the start of every legged observation):

========= ============================================================ =========
0:3       gravity direction in the base frame (unit vector)             -
3:6       base linear velocity in the base frame                         m/s
6:9       base angular velocity in the base frame                        rad/s
9:21      joint positions minus the standing pose                        rad
21:33     joint velocities                                               rad/s
33:45     previous action (clipped)                                      -
========= ============================================================ =========

**Action**: 12 values in [-1, 1], joint position targets
``STANDING_POSE + ACTION_SCALE * action`` with ``ACTION_SCALE`` 0.2 rad (hip), 0.4 rad
(thigh, calf), tracked by torque-limited position motors. ``action_scale_factor``
multiplies ``ACTION_SCALE``: with the trunk held, the default lets a foot rise at most
10 cm above its standing position, a factor of 2 about 21 cm (the targets then span the
calf's URDF range, which allows up to about 2.2).

**Gait generator** (``gait_generator=True``): the action is added to a trot in place,
as in the policies that modulate a periodic trajectory generator (Iscen et al. 2018,
PMTG). A gait phase advances at ``GAIT_FREQUENCY`` (2 Hz) from 0 at each reset; the
diagonal pairs FR+RL and FL+RR swing in turn (:func:`trot_offsets`). The observation then
ends with the sin and cos of the phase. A controller running such a policy must run the
same generator (the bundle's manifest carries the option).

**Fall** (terminates the episode): the trunk touches the ground, tilts more than 1 rad
from upright, or its base is less than 0.12 m above the lowest ground within 0.2 m
(standing height 0.27 m).

**Payload**: ``payload`` kg is added to the trunk's mass, and its weight's moment about
the trunk's centre of mass (offset ``payload_x``, ``payload_y`` m in the trunk frame) is
applied as an external torque at every physics step, so an off-centre load tips the
robot as a real one would.

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
from sim_envs.robots.a1 import A1, LEG_NAMES, NUM_JOINTS, STANDING_HEIGHT, STANDING_POSE
from sim_envs.tasks import Task
from sim_envs.terrain import Terrain, terrain_heights

#: Physics time step (s).
PHYSICS_DT = 1.0 / 200.0
#: Physics steps per env step (50 Hz control).
SUBSTEPS = 4
#: Env step duration (s).
CONTROL_DT = PHYSICS_DT * SUBSTEPS
#: Episode duration (s) of the registered envs (200 steps); success rules use it.
EPISODE_SECONDS = 200 * CONTROL_DT
GRAVITY = 9.81  # m/s^2
MAX_TILT = 1.0  # rad
#: A base lower than this (m) above the lowest ground within GROUND_WINDOW (m) has fallen.
#: The lowest ground, so that a base over a step edge is measured from the lower step.
MIN_BASE_HEIGHT = 0.12
GROUND_WINDOW = 0.2
JOINT_NOISE = 0.05  # rad
#: Start position of the base (m): over the platform, a few mm above standing height.
SPAWN_POSITION = (0.0, 0.0, STANDING_HEIGHT + 0.01)

#: Gait generator: stride frequency (Hz) and the thigh flexion (rad) at mid-swing (the
#: calf flexes twice as much, the foot rises about 6 cm).
GAIT_FREQUENCY = 2.0
GAIT_LIFT = 0.2
#: Phase offset (rad) of each leg, FR, FL, RR, RL: the diagonal pairs trot in turn.
GAIT_LEG_OFFSETS = np.array([0.0, math.pi, math.pi, 0.0])

OBS_PROPRIO = 3 + 3 + 3 + NUM_JOINTS * 3
OBS_GAIT = 2


@dataclass(frozen=True)
class Dynamics:
    """What a legged task changes in the simulation (a family maps its params to this).

    Attributes:
        terrain, difficulty, terrain_seed: the height map (:func:`terrain_heights`).
        friction: ground friction coefficient.
        payload: mass (kg) added to the trunk; ``payload_x``, ``payload_y``: its offset
            (m) from the trunk's centre of mass, trunk frame.
        motor_strength: factor on every joint's torque limit.
        damaged_leg: ``"none"`` or the leg (FR, FL, RR, RL) whose three motors are weak;
            ``leg_strength``: the further factor on that leg's torque limits.
    """

    terrain: str = "flat"
    difficulty: float = 0.0
    terrain_seed: int = 0
    friction: float = 1.0
    payload: float = 0.0
    payload_x: float = 0.0
    payload_y: float = 0.0
    motor_strength: float = 1.0
    damaged_leg: str = "none"
    leg_strength: float = 1.0


def trot_offsets(phase: float) -> np.ndarray:
    """Joint target offsets (rad, ``(12,)``) of the gait generator at gait phase ``phase``.

    A leg swings while ``s = sin(phase + its offset) > 0`` (thigh ``+GAIT_LIFT * s``, calf
    ``-2 * GAIT_LIFT * s``: the foot goes straight up and back down) and stands otherwise.
    """
    swing = GAIT_LIFT * np.maximum(np.sin(phase + GAIT_LEG_OFFSETS), 0.0)
    return np.stack([np.zeros(4), swing, -2.0 * swing], axis=1).reshape(NUM_JOINTS)


def torque_factors(dynamics: Dynamics) -> np.ndarray:
    """Per-joint factor (``(12,)``) on the URDF torque limits for ``dynamics``."""
    factors = np.full(NUM_JOINTS, float(dynamics.motor_strength))
    if dynamics.damaged_leg != "none":
        leg = LEG_NAMES.index(dynamics.damaged_leg)
        factors[3 * leg:3 * leg + 3] *= dynamics.leg_strength
    return factors


class LeggedEnv(MetaEnv):
    """A1 on generated terrain; subclasses add the command, reward and success rule.

    A subclass implements :meth:`dynamics_of` (task -> :class:`Dynamics`),
    :meth:`_start_episode`, :meth:`_task_observation` and :meth:`_reward`.

    Args:
        task: initial task (default: the first train task of seed 0).
        render_mode: ``None`` or ``"rgb_array"`` (camera follows the robot).
        gait_generator: add the action to a trot in place and append the gait phase's
            sin and cos to the observation.
        action_scale_factor: factor on ``ACTION_SCALE`` (module docstring), up to about
            2.2 (the URDF joint limits).
    """

    camera = ((0.0, 0.0, 0.2), 1.3, 40.0, -22.0)
    substeps = SUBSTEPS
    #: Observation values the subclass appends (:meth:`_task_observation` and
    #: :meth:`_heading_observation`).
    task_obs_size = 0

    def __init__(self, task: Task | None = None, render_mode: str | None = None,
                 gait_generator: bool = False, action_scale_factor: float = 1.0) -> None:
        if not isinstance(gait_generator, bool):
            raise ValueError(f"gait_generator must be a bool, got {gait_generator!r}")
        self.gait_generator = gait_generator
        self.action_scale_factor = action_scale_factor  # checked by A1 in _build_scene
        size = OBS_PROPRIO + self.task_obs_size + (OBS_GAIT if gait_generator else 0)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(size,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(NUM_JOINTS,), dtype=np.float32)
        self._terrain_key: tuple[Any, ...] | None = None
        super().__init__(task=task, render_mode=render_mode)

    # ----------------------------------------------------------------- subclass hooks
    def dynamics_of(self, task: Task) -> Dynamics:
        """The simulated dynamics of ``task``."""
        raise NotImplementedError

    def _start_episode(self) -> None:
        """Draw the episode's command (if any) from ``self.np_random``."""

    def _task_observation(self) -> list[np.ndarray]:
        """Values appended after proprioception, before the gait phase."""
        return []

    def _heading_observation(self) -> list[np.ndarray]:
        """Values appended last, after the gait phase: a heading a policy reads at a fixed
        place, the observation's end (``policy.rotate_context``). With
        :meth:`_task_observation`'s, ``task_obs_size`` in all."""
        return []

    def _reward(self, action: np.ndarray, fell: bool) -> tuple[float, bool, dict[str, Any]]:
        """``(reward, success_at_this_step, info)`` of the step just simulated."""
        raise NotImplementedError

    # ----------------------------------------------------------------- MetaEnv hooks
    def _build_scene(self) -> None:
        c = self.client
        # Per-step calls go to pybullet directly (BulletClient wraps each call).
        self._client_id: int = c._client
        c.setGravity(0.0, 0.0, -GRAVITY)
        c.setTimeStep(PHYSICS_DT)
        self.terrain = Terrain(c)
        self.robot = A1(c, SPAWN_POSITION, visual=self.render_mode is not None,
                        action_scale_factor=self.action_scale_factor)
        self._prev_action = np.zeros(NUM_JOINTS)
        self._phase = 0.0
        self._payload_offset = np.zeros(3)  # payload position, trunk frame (m)
        self._payload_weight = 0.0  # N
        self._foot_contact = np.zeros(4, dtype=bool)
        self._leg_collisions = 0
        self._read_state()

    def _apply_task(self, task: Task) -> None:
        d = self.dynamics_of(task)
        # Flat maps are all equal; other maps depend on (type, difficulty, seed).
        key = ("flat",) if d.terrain == "flat" else (d.terrain, d.difficulty, d.terrain_seed)
        if key != self._terrain_key:
            self.terrain.set_heights(terrain_heights(d.terrain, d.difficulty, d.terrain_seed))
            self._terrain_key = key
        self.terrain.set_friction(d.friction)
        self.robot.set_payload(d.payload)
        self.robot.set_torque_factors(torque_factors(d))
        self._payload_offset = np.array([d.payload_x, d.payload_y, 0.0])
        self._payload_weight = d.payload * GRAVITY
        # The saved state (taken right after this hook) starts from the spawn pose.
        self.robot.reset_pose(SPAWN_POSITION, STANDING_POSE)
        self.robot.command_positions(STANDING_POSE)

    def _reset_episode(self) -> None:
        noise = self.np_random.uniform(-JOINT_NOISE, JOINT_NOISE, size=NUM_JOINTS)
        self.robot.reset_pose(SPAWN_POSITION, STANDING_POSE + noise)
        self.robot.command_positions(STANDING_POSE)
        self._prev_action = np.zeros(NUM_JOINTS)
        self._phase = 0.0
        self._foot_contact = np.zeros(4, dtype=bool)
        self._leg_collisions = 0
        self._read_state()
        self._start_episode()

    def _read_state(self) -> None:
        self._pos, self._rot, self._lin, self._ang = self.robot.base_state()
        self._q, self._qd, self._tau = self.robot.joint_states()

    def _observe(self) -> np.ndarray:
        rot_t = self._rot.T
        parts = [-self._rot[2], rot_t @ self._lin, rot_t @ self._ang,
                 self._q - STANDING_POSE, self._qd, self._prev_action]
        parts += self._task_observation()
        if self.gait_generator:
            parts.append(np.array([math.sin(self._phase), math.cos(self._phase)]))
        parts += self._heading_observation()
        return np.concatenate(parts).astype(np.float32)

    def _step(self, action: np.ndarray) -> tuple[float, bool, bool, dict[str, Any]]:
        fell = self._simulate(action)
        reward, success, info = self._reward(action, fell)
        self._prev_action = action
        x, y = float(self._pos[0]), float(self._pos[1])
        limit = self.terrain.half_extent - 0.5
        out_of_bounds = abs(x) > limit or abs(y) > limit
        info["fall"] = fell
        return reward, fell or out_of_bounds, success and not fell, info

    # ----------------------------------------------------------------- physics
    def _simulate(self, action: np.ndarray) -> bool:
        """Send the action's joint targets, step the physics, read the state; True on a fall."""
        cid = self._client_id
        targets = self.robot.action_to_targets(action)
        if self.gait_generator:
            targets = np.clip(targets + trot_offsets(self._phase),
                              self.robot.joint_lower, self.robot.joint_upper)
            self._phase = (self._phase + 2.0 * math.pi * GAIT_FREQUENCY * CONTROL_DT) % (
                2.0 * math.pi)
        self.robot.command_positions(targets)
        off_centre = self._payload_weight > 0.0 and bool(self._payload_offset.any())
        for _ in range(SUBSTEPS):
            if off_centre:  # external torques are cleared after every physics step
                self._apply_payload_moment()
            pybullet.stepSimulation(physicsClientId=cid)
        self._read_state()
        trunk_contact = self._read_contacts()
        x, y, z = float(self._pos[0]), float(self._pos[1]), float(self._pos[2])
        terrain = self.terrain
        return (trunk_contact or bool(self._rot[2, 2] < math.cos(MAX_TILT))
                # Only look up the nearby ground when the map's highest point is not
                # already far enough below the base.
                or (z - terrain.max_height < MIN_BASE_HEIGHT
                    and z - terrain.lowest_height_near(x, y, GROUND_WINDOW) < MIN_BASE_HEIGHT))

    def _apply_payload_moment(self) -> None:
        """Torque of the payload's weight about the trunk's centre of mass (world frame)."""
        cid = self._client_id
        body = self.robot.body_id
        _, quat = pybullet.getBasePositionAndOrientation(body, physicsClientId=cid)
        rot = np.array(pybullet.getMatrixFromQuaternion(quat)).reshape(3, 3)
        rx, ry, _ = rot @ self._payload_offset
        w = self._payload_weight
        # (R r) x (0, 0, -w)
        pybullet.applyExternalTorque(body, -1, [-w * ry, w * rx, 0.0], pybullet.WORLD_FRAME,
                                     physicsClientId=cid)

    def _read_contacts(self) -> bool:
        """Update foot contacts and thigh/calf collisions; True if the trunk touches ground."""
        contacts = pybullet.getContactPoints(bodyA=self.robot.body_id,
                                             bodyB=self.terrain.body_id,
                                             physicsClientId=self._client_id)
        links = {c[3] for c in contacts}
        self._foot_contact = np.array([f in links for f in self.robot.foot_ids])
        self._leg_collisions = len(links & self.robot.leg_link_ids)
        return -1 in links

    # ----------------------------------------------------------------- helpers
    @property
    def yaw(self) -> float:
        """Base yaw (rad, world frame)."""
        return math.atan2(self._rot[1, 0], self._rot[0, 0])

    def render(self) -> np.ndarray | None:
        """An ``(H, W, 3)`` uint8 image with the camera following the base, or ``None``."""
        _, distance, yaw, pitch = type(self).camera
        x, y, z = (float(v) for v in self._pos)
        self.camera = ((x, y, z - 0.1), distance, yaw, pitch)
        return super().render()
