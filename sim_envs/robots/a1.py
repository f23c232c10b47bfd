"""The Unitree A1 quadruped (``a1/a1.urdf`` from ``pybullet_data``).

The robot piece of the locomotion family: loading, the standing pose, joint position
targets as actions and proprioception. Every per-step PyBullet call is batched over the
12 actuated joints (one ``setJointMotorControlArray``, one ``getJointStates``).

Joint order (12 actuated joints): ``FR, FL, RR, RL`` legs, each ``hip`` (abduction),
``upper`` (thigh) and ``lower`` (calf) joint.

Actuation: PyBullet position motors, one per joint, tracking
``target = STANDING_POSE + ACTION_SCALE * action`` (rad, within the URDF joint limits)
with the motor's maximum torque ``factor * URDF effort limit`` (20 N·m hip, 55 N·m thigh
and calf), one factor per joint (:meth:`A1.set_torque_factors`).
"""

from __future__ import annotations

import math

import numpy as np
import pybullet
import pybullet_data
from pybullet_utils.bullet_client import BulletClient

#: Number of actuated joints.
NUM_JOINTS = 12
#: Standing joint angles (rad), hip/thigh/calf per leg, legs FR, FL, RR, RL.
STANDING_POSE = np.array([0.0, 0.9, -1.8] * 4)
#: Joint target offset (rad) of an action of +1; hip, thigh, calf per leg.
ACTION_SCALE = np.array([0.2, 0.4, 0.4] * 4)
#: Base height (m) above flat ground when standing in :data:`STANDING_POSE`.
STANDING_HEIGHT = 0.27
#: Mass (kg) of the trunk link in the URDF, before any payload.
TRUNK_MASS = 4.713
#: Friction coefficient of every robot link. Bullet multiplies the two bodies'
#: coefficients, so with 1.0 here the ground's coefficient is the contact friction.
LINK_FRICTION = 1.0
#: Radius (m) of each foot's collision sphere in the URDF.
FOOT_RADIUS = 0.02
# Gains of PyBullet's position motor (dimensionless): the motor's velocity target is
# POSITION_GAIN * position error / dt, reached within the torque limit.
POSITION_GAIN = 0.1
VELOCITY_GAIN = 1.0

#: Leg names in joint order.
LEG_NAMES: tuple[str, ...] = ("FR", "FL", "RR", "RL")
_LEGS = LEG_NAMES
_PARTS = ("hip", "upper", "lower")


class A1:
    """One A1 in a PyBullet client.

    Args:
        client: the PyBullet client to load into.
        base_position: initial base position (m, world frame).
        visual: load the visual meshes (needed only to render; the physics is the same).
        action_scale_factor: factor on :data:`ACTION_SCALE` (``> 0``; the targets must stay
            within the URDF joint limits, which allow up to about 2.2).
    """

    def __init__(self, client: BulletClient,
                 base_position: tuple[float, float, float] = (0.0, 0.0, STANDING_HEIGHT),
                 visual: bool = True, action_scale_factor: float = 1.0) -> None:
        self.client = client
        # Per-step calls go to pybullet directly: BulletClient's attribute lookup builds a
        # functools.partial on every call.
        self._client_id: int = client._client
        self.body_id = client.loadURDF(
            pybullet_data.getDataPath() + "/a1/a1.urdf", list(base_position),
            flags=pybullet.URDF_USE_INERTIA_FROM_FILE
            | (0 if visual else pybullet.URDF_IGNORE_VISUAL_SHAPES))
        by_name = {}
        toes = {}
        for j in range(client.getNumJoints(self.body_id)):
            info = client.getJointInfo(self.body_id, j)
            by_name[info[1].decode()] = info
            if info[12].decode().endswith("_toe"):
                toes[info[12].decode()] = j
        names = [f"{leg}_{part}_joint" for leg in _LEGS for part in _PARTS]
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"a1.urdf lacks the joints {missing}")
        #: PyBullet joint indices of the 12 actuated joints, in :data:`STANDING_POSE` order.
        self.joint_ids: list[int] = [by_name[n][0] for n in names]
        #: Link indices of the four feet (spheres of radius FOOT_RADIUS), FR, FL, RR, RL.
        self.foot_ids: list[int] = [toes[f"{leg}_toe"] for leg in _LEGS]
        #: Link indices of the thighs and calves (a link's index is its joint's).
        self.leg_link_ids: frozenset[int] = frozenset(
            by_name[f"{leg}_{part}_joint"][0] for leg in _LEGS for part in ("upper", "lower"))
        self.joint_lower = np.array([by_name[n][8] for n in names])
        self.joint_upper = np.array([by_name[n][9] for n in names])
        if (isinstance(action_scale_factor, bool)
                or not isinstance(action_scale_factor, (int, float))
                or not action_scale_factor > 0.0):
            raise ValueError(f"action_scale_factor must be a number > 0, "
                             f"got {action_scale_factor!r}")
        #: Joint target offset (rad) of an action of +1: ``ACTION_SCALE x factor``.
        self.action_scale = ACTION_SCALE * float(action_scale_factor)
        if np.any(STANDING_POSE - self.action_scale < self.joint_lower) or np.any(
                STANDING_POSE + self.action_scale > self.joint_upper):
            limit = float(np.min(np.minimum(STANDING_POSE - self.joint_lower,
                                            self.joint_upper - STANDING_POSE) / ACTION_SCALE))
            raise ValueError(f"action_scale_factor {action_scale_factor!r}: STANDING_POSE ± "
                             f"the action scale exceeds the URDF joint limits (at most "
                             f"{limit:.3f})")
        #: URDF torque limits (N·m) of the 12 joints.
        self.effort_limits = np.array([by_name[n][10] for n in names])
        self._max_forces = self.effort_limits.tolist()
        self._zeros = [0.0] * NUM_JOINTS
        self._position_gains = [POSITION_GAIN] * NUM_JOINTS
        self._velocity_gains = [VELOCITY_GAIN] * NUM_JOINTS
        for link in range(-1, client.getNumJoints(self.body_id)):
            client.changeDynamics(self.body_id, link, lateralFriction=LINK_FRICTION)
        # PyBullet's default velocity motors would brake every joint; position motors
        # replace them on the first command.
        self.command_positions(STANDING_POSE)

    # ------------------------------------------------------------------ task knobs
    def set_payload(self, payload_kg: float) -> None:
        """Add ``payload_kg`` (kg) to the trunk mass, at the trunk's centre of mass."""
        if not math.isfinite(payload_kg) or payload_kg < 0:
            raise ValueError(f"payload must be a finite mass >= 0 kg, got {payload_kg!r}")
        self.client.changeDynamics(self.body_id, -1, mass=TRUNK_MASS + payload_kg)

    def set_torque_factors(self, factors: np.ndarray) -> None:
        """Set each joint's maximum torque to ``factors[j]`` x its URDF effort limit.

        Args:
            factors: ``(12,)`` finite factors >= 0 (0: a limp joint).
        """
        factors = np.asarray(factors, dtype=np.float64)
        if factors.shape != (NUM_JOINTS,) or not np.all(np.isfinite(factors)) or np.any(
                factors < 0):
            raise ValueError(f"torque factors must be {NUM_JOINTS} finite values >= 0, "
                             f"got {factors!r}")
        self._max_forces = (self.effort_limits * factors).tolist()

    @property
    def max_forces(self) -> np.ndarray:
        """Current maximum joint torques (N·m), shape ``(12,)``."""
        return np.array(self._max_forces)

    # ------------------------------------------------------------------ state
    def reset_pose(self, base_position: tuple[float, float, float],
                   joint_positions: np.ndarray) -> None:
        """Teleport: base at ``base_position`` (m), upright, yaw 0, at rest; joints at
        ``joint_positions`` (rad, shape ``(12,)``) with zero velocity."""
        c = self.client
        c.resetBasePositionAndOrientation(self.body_id, list(base_position), [0, 0, 0, 1])
        c.resetBaseVelocity(self.body_id, [0, 0, 0], [0, 0, 0])
        c.resetJointStatesMultiDof(self.body_id, self.joint_ids,
                                   [[float(q)] for q in joint_positions],
                                   [[0.0]] * NUM_JOINTS)

    def action_to_targets(self, action: np.ndarray) -> np.ndarray:
        """Joint position targets (rad, ``(12,)``) of an action in ``[-1, 1]^12``.

        No clipping needed: the constructor checked that every such target lies within
        the URDF joint limits.
        """
        return STANDING_POSE + self.action_scale * action

    def command_positions(self, targets: np.ndarray) -> None:
        """Send joint position targets (rad, shape ``(12,)``) to the 12 position motors."""
        pybullet.setJointMotorControlArray(
            self.body_id, self.joint_ids, pybullet.POSITION_CONTROL,
            targetPositions=targets.tolist(), targetVelocities=self._zeros,
            forces=self._max_forces, positionGains=self._position_gains,
            velocityGains=self._velocity_gains, physicsClientId=self._client_id)

    def joint_states(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Joint positions (rad), velocities (rad/s) and motor torques (N·m), each ``(12,)``.

        The torques are those of the last physics step.
        """
        states = pybullet.getJointStates(self.body_id, self.joint_ids,
                                         physicsClientId=self._client_id)
        q, qd, _, tau = zip(*states)
        return np.array(q), np.array(qd), np.array(tau)

    def foot_states(self) -> tuple[np.ndarray, np.ndarray]:
        """Foot sphere centres (m, world) and their linear velocities (m/s, world), each
        ``(4, 3)``, legs FR, FL, RR, RL."""
        states = pybullet.getLinkStates(self.body_id, self.foot_ids, computeLinkVelocity=1,
                                        physicsClientId=self._client_id)
        return (np.array([s[0] for s in states]), np.array([s[6] for s in states]))

    def base_state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Base position (m, world), rotation matrix base->world ``(3, 3)``, linear
        velocity (m/s, world) and angular velocity (rad/s, world)."""
        cid = self._client_id
        pos, quat = pybullet.getBasePositionAndOrientation(self.body_id, physicsClientId=cid)
        lin, ang = pybullet.getBaseVelocity(self.body_id, physicsClientId=cid)
        rot = np.array(pybullet.getMatrixFromQuaternion(quat)).reshape(3, 3)
        return np.array(pos), rot, np.array(lin), np.array(ang)
