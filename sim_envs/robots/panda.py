"""The Franka Emika Panda arm: loading, Cartesian end-effector control and proprioception.

The robot is pybullet_data's ``franka_panda/panda.urdf`` on a fixed base at the world
origin. The end effector (EE) is the ``panda_grasptarget`` frame, the point between the
fingertips; the gripper always points straight down with a fixed yaw, so its fingers
close along the world y axis.

Control is Cartesian: an action ``delta`` in ``[-1, 1]^3`` moves the EE target by
``delta * max_ee_step`` metres from the *measured* EE position, clipped to a workspace
box. The joint targets come from one damped-least-squares step of differential inverse
kinematics (position and orientation, with a null-space pull towards the home posture),
and the joints track them with PyBullet's position motors during the next physics
substeps. One IK step (~15 µs) is ~3x cheaper than ``calculateInverseKinematics`` with
its default 20 iterations, and accurate for the small per-step displacements used here.

The gripper command ``g`` in ``[-1, 1]`` sets the finger opening absolutely:
``-1`` closed, ``+1`` fully open (8 cm); the finger motors squeeze with at most
``finger_force`` newtons each.

Every PyBullet call goes straight to the ``pybullet`` module with an explicit
``physicsClientId`` and batched joint calls (``getJointStates``,
``setJointMotorControlArray``): the per-step Python overhead is a few tens of µs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pybullet
import pybullet_data

try:  # numpy's solve gufunc without the Python wrapper: 1.5 µs instead of 5 µs per step
    from numpy.linalg._umath_linalg import solve1 as _solve
except ImportError:  # pragma: no cover - private name; fall back to the public API
    _solve = np.linalg.solve

#: Arm joint indices in the URDF (7 revolute joints).
ARM_JOINTS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6)
#: Finger joint indices (2 prismatic joints, 0 to 4 cm each).
FINGER_JOINTS: tuple[int, ...] = (9, 10)
#: ``panda_grasptarget``: the point between the fingertips.
EE_LINK = 11
#: Home posture of the arm (rad): EE at about (0.45, 0, 0.30) m pointing down.
HOME_ARM: tuple[float, ...] = (0.0, -0.2611, 0.0, -2.4286, 0.0, 2.1675, math.pi / 4)
ARM_LOWER = np.array([-2.9671, -1.8326, -2.9671, -3.1416, -2.9671, -0.0873, -2.9671])
ARM_UPPER = np.array([2.9671, 1.8326, 2.9671, 0.0, 2.9671, 3.8223, 2.9671])
ARM_MAX_FORCE = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)
#: Maximum opening of one finger (m); the gripper opens to twice this.
FINGER_MAX = 0.04
#: Gripper pointing down, fingers closing along world y (quaternion x, y, z, w).
EE_DOWN = (1.0, 0.0, 0.0, 0.0)
#: Size of :meth:`Panda.proprioception`.
PROPRIO_DIM = 21

_DAMPING = 1e-3  # squared DLS damping: well-conditioned near singularities, tiny bias
_DAMPING_EYE = _DAMPING * np.eye(6)
_NULL_GAIN = 0.1  # fraction of the home-posture error removed per step in the null space


class Panda:
    """One Panda in an existing PyBullet client.

    Args:
        client_id: PyBullet physics client id (``BulletClient._client``).
        max_ee_step: EE displacement (m) of a unit action, per env step.
        workspace_low, workspace_high: box (m, world frame) the EE target is clipped to.
        finger_width: when not ``None``, the fingers are held at this total opening (m)
            and the gripper command is ignored (for tasks without grasping).
        finger_force: maximum force of each finger motor (N).
        visual: load the visual meshes (needed only to render; the physics is the same).

    State read by :meth:`read_state` (after each physics update):
        ``state`` (21,) float64, the proprioception vector (see :meth:`proprioception`);
        ``q``, ``dq`` (7,) arm joint positions (rad) and velocities (rad/s);
        ``ee_pos`` (3,) m and ``ee_vel`` (3,) m/s in the world frame;
        ``finger_width`` total finger opening (m).
    """

    def __init__(
        self,
        client_id: int,
        *,
        max_ee_step: float = 0.05,
        workspace_low: Sequence[float] = (0.10, -0.65, 0.02),
        workspace_high: Sequence[float] = (0.80, 0.65, 0.70),
        finger_width: float | None = None,
        finger_force: float = 20.0,
        visual: bool = True,
    ) -> None:
        if not max_ee_step > 0:
            raise ValueError(f"max_ee_step must be positive, got {max_ee_step}")
        if finger_width is not None and not 0.0 <= finger_width <= 2 * FINGER_MAX:
            raise ValueError(f"finger_width must be in [0, {2 * FINGER_MAX}] m, got {finger_width}")
        self._cid = client_id
        self.max_ee_step = float(max_ee_step)
        self.workspace_low = np.asarray(workspace_low, dtype=np.float64)
        self.workspace_high = np.asarray(workspace_high, dtype=np.float64)
        if self.workspace_low.shape != (3,) or not np.all(self.workspace_low < self.workspace_high):
            raise ValueError("workspace_low/high must be 3-vectors with low < high")
        self.fixed_finger_width = finger_width
        self.body = pybullet.loadURDF(
            pybullet_data.getDataPath() + "/franka_panda/panda.urdf", useFixedBase=True,
            flags=pybullet.URDF_ENABLE_CACHED_GRAPHICS_SHAPES | _visual_flags(visual),
            physicsClientId=client_id)
        # Never sleep: a restored state must not depend on an earlier episode (precaution).
        pybullet.changeDynamics(self.body, -1,
                                activationState=pybullet.ACTIVATION_STATE_DISABLE_SLEEPING,
                                physicsClientId=client_id)
        self._joints = ARM_JOINTS + FINGER_JOINTS
        self._forces = ARM_MAX_FORCE + (finger_force, finger_force)
        self._home = np.array(HOME_ARM)
        self._zeros = [0.0] * len(self._joints)
        self.state = np.zeros(PROPRIO_DIM)
        self.q = self.dq = self.ee_pos = self.ee_vel = self.state[:0]  # set by read_state
        self.ee_orn: tuple[float, ...] = EE_DOWN
        self.finger_width = 0.0
        self._q_all: list[float] = list(self._zeros)
        self._finger_target = 0.0
        self.reset()

    def reset(
        self, arm_offset: np.ndarray | None = None, finger_width: float | None = None
    ) -> None:
        """Teleport to the home posture (plus ``arm_offset`` (7,) rad) at rest.

        ``finger_width`` (m) sets the initial opening; default: the fixed width, or open.
        """
        arm = self._home if arm_offset is None else self._home + arm_offset
        if finger_width is None:
            finger_width = (self.fixed_finger_width if self.fixed_finger_width is not None
                            else 2 * FINGER_MAX)
        half = 0.5 * finger_width
        cid = self._cid
        for joint, angle in zip(ARM_JOINTS, arm):
            pybullet.resetJointState(self.body, joint, float(angle), 0.0, physicsClientId=cid)
        for joint in FINGER_JOINTS:
            pybullet.resetJointState(self.body, joint, half, 0.0, physicsClientId=cid)
        self._finger_target = half
        self.read_state()
        self.hold()

    def hold(self) -> None:
        """Set the motor targets to the current posture (the arm stays where it is)."""
        pybullet.setJointMotorControlArray(
            self.body, self._joints, pybullet.POSITION_CONTROL,
            targetPositions=list(self.q) + [self._finger_target] * 2, forces=self._forces,
            physicsClientId=self._cid)

    def apply_action(self, ee_delta: np.ndarray, gripper: float | None = None) -> None:
        """Set motor targets for one env step (does not step physics).

        Args:
            ee_delta: (3,) in ``[-1, 1]``, EE displacement in units of ``max_ee_step``.
            gripper: in ``[-1, 1]``, target opening (-1 closed, +1 open); ignored when the
                finger width is fixed.
        """
        ee_pos = self.ee_pos
        target = np.minimum(np.maximum(ee_pos + self.max_ee_step * ee_delta,
                                       self.workspace_low), self.workspace_high)
        arm_target = self._ik_step(target - ee_pos)
        if self.fixed_finger_width is None and gripper is not None:
            self._finger_target = FINGER_MAX * 0.5 * (float(gripper) + 1.0)
        pybullet.setJointMotorControlArray(
            self.body, self._joints, pybullet.POSITION_CONTROL,
            targetPositions=arm_target.tolist() + [self._finger_target] * 2,
            forces=self._forces, physicsClientId=self._cid)

    def _ik_step(self, ee_step: np.ndarray) -> np.ndarray:
        """Joint targets (7,) moving the EE by ``ee_step`` (3,) m, pointing down: one DLS step."""
        lin, ang = pybullet.calculateJacobian(
            self.body, EE_LINK, (0.0, 0.0, 0.0), self._q_all, self._zeros, self._zeros,
            physicsClientId=self._cid)
        jac = np.array(lin + ang)[:, :7]
        # Orientation error as a rotation vector (small-angle form) from the EE quaternion
        # (x, y, z, w) to EE_DOWN = (1, 0, 0, 0): 2 * (w, z, -y), sign-corrected so that
        # q and -q (the same rotation) both take the short way.
        x, y, z, w = self.ee_orn
        two = 2.0 if x >= 0.0 else -2.0
        dx, dy, dz = ee_step.tolist()
        err = np.array((dx, dy, dz, two * w, two * z, -two * y))
        # Min-norm step plus a null-space pull to home: dq = p + J^T (J J^T + d I)^-1 (e - J p).
        pull = _NULL_GAIN * (self._home - self.q)
        dq = pull + jac.T @ _solve(jac @ jac.T + _DAMPING_EYE, err - jac @ pull)
        # np.minimum/np.maximum: same as np.clip, a few µs cheaper on tiny arrays.
        return np.minimum(np.maximum(self.q + dq, ARM_LOWER), ARM_UPPER)

    def read_state(self) -> None:
        """Read joint and EE state from the simulation (call after stepping physics)."""
        cid = self._cid
        states = pybullet.getJointStates(self.body, self._joints, physicsClientId=cid)
        link = pybullet.getLinkState(self.body, EE_LINK, computeLinkVelocity=1,
                                     computeForwardKinematics=1, physicsClientId=cid)
        self._q_all = q_all = [s[0] for s in states]
        # One array for the whole proprioceptive state; q, dq, ee_pos, ee_vel are views.
        state = np.array((*q_all[:7], *[s[1] for s in states[:7]], *link[4], *link[6],
                          q_all[7] + q_all[8]))
        self.state = state
        self.q, self.dq = state[0:7], state[7:14]
        self.ee_pos, self.ee_vel = state[14:17], state[17:20]
        self.finger_width = float(state[20])
        self.ee_orn = link[5]

    def proprioception(self) -> np.ndarray:
        """(21,) float32: arm q (7, rad), arm dq (7, rad/s), EE position (3, m),
        EE velocity (3, m/s), finger opening (1, m)."""
        return self.state.astype(np.float32)


def _visual_flags(visual: bool) -> int:
    """``loadURDF`` flags: without ``visual`` the meshes are not loaded (about 50 MB per
    Panda); the physics (collision shapes, inertia) is the same."""
    return 0 if visual else pybullet.URDF_IGNORE_VISUAL_SHAPES


def panda_scene(client_id: int, **panda_kwargs: Any) -> Panda:
    """Set up the Panda scene every Panda family shares and return the robot.

    Gravity, a 240 Hz time step, deterministic contact-pair ordering (so restoring a saved
    state replays bit-identically) and the ground plane, then the :class:`Panda` built
    with ``panda_kwargs``.
    """
    pybullet.setGravity(0.0, 0.0, -9.81, physicsClientId=client_id)
    pybullet.setTimeStep(1.0 / 240.0, physicsClientId=client_id)
    pybullet.setPhysicsEngineParameter(deterministicOverlappingPairs=1,
                                       physicsClientId=client_id)
    pybullet.loadURDF(pybullet_data.getDataPath() + "/plane.urdf", physicsClientId=client_id)
    return Panda(client_id, **panda_kwargs)
