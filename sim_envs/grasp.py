"""Grasp: pick up an object of unknown shape, size, mass and friction with the Panda.

Each task is one object on the table (z = 0) in front of the robot:

============  ======  ===================  =======  ===================================
parameter     unit    range                hidden   meaning
============  ======  ===================  =======  ===================================
``shape``     -       catalogue names      yes      primitive or pybullet_data mesh
``size``      m       [0.02, 0.08]         yes      largest side of its bounding box (1 mm)
``mass``      kg      [0.05, 1.0]          yes      object mass
``friction``  -       [0.3, 1.5]           yes      lateral friction coefficient
``x``         m       [0.40, 0.60]         no       initial position (observed)
``y``         m       [-0.15, 0.15]        no       initial position (observed)
``yaw``       rad     [-pi, pi]            yes      initial rotation about z
============  ======  ===================  =======  ===================================

The objects (``sim_envs/objects.py``) are a box, a cylinder and a sphere built from
PyBullet primitives and 30 meshes from pybullet_data's ``random_urdfs``.

Split (disjoint by construction): a task is a **test** task iff its object is one of the
held-out objects (the sphere and 6 meshes, :data:`sim_envs.objects.TEST_OBJECTS`) **or**
its mass lies in the held-out band [0.45, 0.60] kg. Train tasks use the box, the
cylinder and 24 meshes with a mass outside the band. Test sampling draws a held-out object
(any mass) with probability 3/4, else a training object with a mass in the band.

Reward per step (dense, shaped; metres):

* reach: ``-||ee - object||`` (EE to object origin);
* grip: ``+0.25`` while both fingers touch the object;
* lift: ``+5 * clip(lift, 0, 0.15)``, ``lift`` = object height above its resting height.

Success: ``lift >= 0.10 m`` for 10 consecutive steps. Episodes never terminate early;
the registered TimeLimit truncates at 100 steps.

Env (``sim_envs/Grasp-v0``, 24 Hz control): see :class:`GraspEnv`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pybullet
from gymnasium import spaces

from sim_envs.base_env import MetaEnv
from sim_envs.objects import CATALOGUE, TEST_OBJECTS, TRAIN_OBJECTS, ShapeCache, create_object
from sim_envs.robots.panda import FINGER_JOINTS, PROPRIO_DIM, panda_scene
from sim_envs.tasks import ParamSpec, Split, Task, TaskFamily, TaskParams, param

#: Masses (kg) held out for testing, inclusive.
MASS_TEST_BAND = (0.45, 0.60)
MASS_RANGE = (0.05, 1.0)
SIZE_RANGE = (0.02, 0.08)
FRICTION_RANGE = (0.3, 1.5)
X_RANGE = (0.40, 0.60)
Y_RANGE = (-0.15, 0.15)
#: Probability that a test task uses a held-out object (else: training object, band mass).
TEST_HELD_OUT_OBJECT_PROB = 0.75
#: Lift (m) that counts as lifted, and the consecutive steps it must be held.
LIFT_SUCCESS = 0.10
HOLD_STEPS = 10
GRIP_BONUS = 0.25
LIFT_WEIGHT = 5.0
LIFT_CAP = 0.15
MAX_EE_STEP = 0.05
#: Box (m) the EE target is clipped to; the fingertips reach 7 mm below the EE point.
WORKSPACE_LOW = (0.20, -0.40, 0.005)
WORKSPACE_HIGH = (0.80, 0.40, 0.50)
#: Physics steps run after placing a new object so its contacts settle before saveState.
SETTLE_STEPS = 4
#: Maximum squeeze force of each finger (N): the real Panda hand grips with up to 70 N.
FINGER_FORCE = 35.0
OBS_DIM = PROPRIO_DIM + 6


@dataclass(frozen=True)
class GraspParams(TaskParams):
    """One object and its initial pose."""

    shape: str = param(ParamSpec(
        choices=tuple(CATALOGUE), hidden=True, doc="object name in sim_envs.objects.CATALOGUE"))
    size: float = param(ParamSpec(
        unit="m", low=SIZE_RANGE[0], high=SIZE_RANGE[1], hidden=True,
        doc="largest side of the object's bounding box"))
    mass: float = param(ParamSpec(
        unit="kg", low=MASS_RANGE[0], high=MASS_RANGE[1], hidden=True, doc="object mass"))
    friction: float = param(ParamSpec(
        unit="", low=FRICTION_RANGE[0], high=FRICTION_RANGE[1], hidden=True,
        doc="lateral friction coefficient of the object"))
    x: float = param(ParamSpec(
        unit="m", low=X_RANGE[0], high=X_RANGE[1], hidden=False,
        doc="initial x of the object on the table (observed)"))
    y: float = param(ParamSpec(
        unit="m", low=Y_RANGE[0], high=Y_RANGE[1], hidden=False,
        doc="initial y of the object on the table (observed)"))
    yaw: float = param(ParamSpec(
        unit="rad", low=-math.pi, high=math.pi, hidden=True,
        doc="initial rotation of the object about the vertical axis"))


def in_mass_test_band(mass: float) -> bool:
    """True if ``mass`` (kg) is in the held-out band (boundaries included)."""
    return MASS_TEST_BAND[0] <= mass <= MASS_TEST_BAND[1]


class GraspFamily(TaskFamily):
    """Objects to pick up; held-out objects and a held-out mass band form the test split."""

    name = "grasp"
    params_type = GraspParams
    split_doc = (
        f"test iff the object is held out ({', '.join(TEST_OBJECTS)}) or the mass is in "
        f"[{MASS_TEST_BAND[0]}, {MASS_TEST_BAND[1]}] kg; train otherwise (objects "
        f"{', '.join(TRAIN_OBJECTS)}, mass outside the band). Test sampling: a held-out "
        f"object with any mass with probability {TEST_HELD_OUT_OBJECT_PROB}, else a "
        "training object with a mass in the band.")

    def _sample_params(self, rng: np.random.Generator, split: Split) -> GraspParams:
        low, high = MASS_TEST_BAND
        if split == "test":
            if rng.random() < TEST_HELD_OUT_OBJECT_PROB:
                shape = TEST_OBJECTS[rng.integers(len(TEST_OBJECTS))]
                mass = rng.uniform(*MASS_RANGE)
            else:
                shape = TRAIN_OBJECTS[rng.integers(len(TRAIN_OBJECTS))]
                mass = rng.uniform(low, high)
        else:
            shape = TRAIN_OBJECTS[rng.integers(len(TRAIN_OBJECTS))]
            # Uniform on [min, low) U (high, max].
            below = low - MASS_RANGE[0]
            draw = rng.uniform(0.0, below + MASS_RANGE[1] - high)
            mass = MASS_RANGE[0] + draw if draw < below else high + (draw - below)
            if in_mass_test_band(mass):  # only an exact boundary value can land here
                mass = MASS_RANGE[0]
        return GraspParams(
            shape=shape, size=float(rng.uniform(*SIZE_RANGE)), mass=float(mass),
            friction=float(rng.uniform(*FRICTION_RANGE)), x=float(rng.uniform(*X_RANGE)),
            y=float(rng.uniform(*Y_RANGE)), yaw=float(rng.uniform(-math.pi, math.pi)))

    def split_of(self, params: TaskParams) -> Split:
        if not isinstance(params, GraspParams):
            raise ValueError(f"grasp expects GraspParams, got {type(params).__name__}")
        held_out = params.shape in TEST_OBJECTS or in_mass_test_band(params.mass)
        return "test" if held_out else "train"


class GraspEnv(MetaEnv):
    """Panda picking up one object from the table.

    Observation (float32, shape (27,), unbounded Box):
    ``[q (7, rad), dq (7, rad/s), EE position (3, m), EE velocity (3, m/s),
    finger opening (1, m), object position (3, m), object - EE position (3, m)]``;
    the object position is its body origin, as a perception system would report it.
    Shape, size, mass, friction and yaw are not observed.

    Action (float32, shape (4,), in [-1, 1]): ``[dx, dy, dz]`` Cartesian EE displacement
    in units of 5 cm per step (world frame; differential IK, gripper pointing down,
    fingers closing along world y) and ``g``, the finger opening target: -1 closed,
    +1 open (8 cm), linear in between; the fingers squeeze with at most 35 N each.
    Finite out-of-range values are clipped to [-1, 1]; wrong shapes and NaN/inf raise
    ``ValueError``. The EE target is clipped to x in [0.20, 0.80], y in [-0.40, 0.40],
    z in [0.005, 0.50] m.

    Reward and success: see the module docstring. ``info`` has ``distance`` (EE to object,
    m), ``lift`` (m), ``grip`` (both fingers touching), ``task_id``, ``success``.

    Physics: 240 Hz, 10 substeps per env step (24 Hz control). A task switch (2-4 ms)
    removes the previous object, creates the new one from cached shapes (objects are
    built to the nearest millimetre of ``size``, see ``sim_envs.objects.ShapeCache``) and
    lets it settle for 4 physics steps; that scene is saved and every reset restores it,
    then jitters the arm's home posture by up to +-0.02 rad per joint (``np_random``) with
    the gripper open.
    """

    family_type = GraspFamily
    camera = ((0.45, 0.0, 0.2), 0.85, 140.0, -40.0)
    substeps = 10

    def __init__(self, task: Task | None = None, render_mode: str | None = None) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
        self._object: int | None = None
        self._rest_z = 0.0
        self._lifted_steps = 0
        self._obs = np.zeros(OBS_DIM, np.float32)
        super().__init__(task=task, render_mode=render_mode)

    _FINGERS: ClassVar[frozenset[int]] = frozenset(FINGER_JOINTS)

    def _build_scene(self) -> None:
        cid = self.client._client
        self._cid = cid
        self.robot = panda_scene(cid, max_ee_step=MAX_EE_STEP, workspace_low=WORKSPACE_LOW,
                           workspace_high=WORKSPACE_HIGH, finger_force=FINGER_FORCE,
                           visual=self.render_mode is not None)
        self._shapes = ShapeCache(cid, visual=self.render_mode is not None)

    def _apply_task(self, task: Task) -> None:
        params = task.params
        assert isinstance(params, GraspParams)
        cid = self._cid
        if self._object is not None:
            pybullet.removeBody(self._object, physicsClientId=cid)
        self._object = create_object(self._shapes, params.shape, params.size, params.mass,
                                     params.friction, (params.x, params.y), params.yaw)
        self.robot.reset()
        for _ in range(SETTLE_STEPS):
            pybullet.stepSimulation(physicsClientId=cid)
        self._rest_z = pybullet.getBasePositionAndOrientation(
            self._object, physicsClientId=cid)[0][2]

    def _reset_episode(self) -> None:
        self.robot.reset(arm_offset=self.np_random.uniform(-0.02, 0.02, 7))
        self._lifted_steps = 0
        self._obs, _ = self._observe_object()

    def _observe_object(self) -> tuple[np.ndarray, np.ndarray]:
        """(observation, object position (3,) m)."""
        assert self._object is not None
        position = np.array(pybullet.getBasePositionAndOrientation(
            self._object, physicsClientId=self._cid)[0])
        robot = self.robot
        obs = np.concatenate((robot.state, position, position - robot.ee_pos))
        return obs.astype(np.float32), position

    def _observe(self) -> np.ndarray:
        return self._obs

    def _step(self, action: np.ndarray) -> tuple[float, bool, bool, dict[str, Any]]:
        robot, cid = self.robot, self._cid
        robot.apply_action(action[:3], action[3])
        for _ in range(self.substeps):
            pybullet.stepSimulation(physicsClientId=cid)
        robot.read_state()
        self._obs, position = self._observe_object()
        offset = position - robot.ee_pos
        distance = math.sqrt(offset @ offset)
        touching = {c[3] for c in pybullet.getContactPoints(
            robot.body, self._object, physicsClientId=cid)}
        grip = self._FINGERS <= touching
        lift = float(position[2]) - self._rest_z
        self._lifted_steps = self._lifted_steps + 1 if lift >= LIFT_SUCCESS else 0
        reward = (-distance + GRIP_BONUS * grip
                  + LIFT_WEIGHT * min(max(lift, 0.0), LIFT_CAP))
        info = {"distance": distance, "lift": lift, "grip": grip,
                "task_id": self._task.task_id}
        return reward, False, self._lifted_steps >= HOLD_STEPS, info
