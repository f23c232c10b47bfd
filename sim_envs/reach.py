"""Reach: move the Panda's end effector to a hidden target position.

Each task is one target position in front of the robot, given in cylindrical coordinates
around the robot's base axis (z up, the arm faces +x):

============  ======  ==================  ==========================================
parameter     unit    range               meaning
============  ======  ==================  ==========================================
``azimuth``   rad     [-pi/3, pi/3]       angle from the +x axis towards +y
``radius``    m       [0.30, 0.65]        horizontal distance from the base axis
``height``    m       [0.10, 0.50]        height above the table
============  ======  ==================  ==========================================

All three are hidden: the observation is proprioception only, so the dense reward is the
only clue to where the target is, and a policy must find it by adapting.

Split (disjoint by construction): a task is a **test** task iff its target lies in one of
the two held-out sectors ``20 deg <= |azimuth| <= 35 deg``; every other target is a
**train** target. Test targets are therefore surrounded by training targets on both
sides (interpolation to unseen directions), at every radius and height.

Env (``sim_envs/Reach-v0``, 50 steps per episode, 24 Hz control): see :class:`ReachEnv`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pybullet
from gymnasium import spaces

from sim_envs.base_env import MetaEnv
from sim_envs.robots.panda import PROPRIO_DIM, panda_scene
from sim_envs.tasks import ParamSpec, Split, Task, TaskFamily, TaskParams, param

AZIMUTH_MAX = math.pi / 3
#: Held-out azimuth band (rad) on each side: |azimuth| in [low, high] is a test target.
TEST_SECTOR = (math.radians(20.0), math.radians(35.0))
#: The EE is within this distance (m) of the target: success.
SUCCESS_DISTANCE = 0.05
#: Weight of the squared action norm in the reward.
ACTION_COST = 0.01
#: EE displacement (m) of a unit action per env step.
MAX_EE_STEP = 0.05
#: Box (m) the EE target is clipped to. The floor of 5 cm keeps the fingers off the table
#: (no contacts to solve) and is below the lowest target (10 cm).
WORKSPACE_LOW = (0.10, -0.65, 0.05)
WORKSPACE_HIGH = (0.80, 0.65, 0.70)
#: Fixed finger opening (m): the gripper is not used in reach.
FINGER_WIDTH = 0.02


@dataclass(frozen=True)
class ReachParams(TaskParams):
    """The hidden target of a reach task, in cylindrical coordinates about the base."""

    azimuth: float = param(ParamSpec(
        unit="rad", low=-AZIMUTH_MAX, high=AZIMUTH_MAX, hidden=True,
        doc="target angle from the robot's +x axis towards +y"))
    radius: float = param(ParamSpec(
        unit="m", low=0.30, high=0.65, hidden=True,
        doc="target horizontal distance from the robot's base axis"))
    height: float = param(ParamSpec(
        unit="m", low=0.10, high=0.50, hidden=True, doc="target height above the table"))

    @property
    def position(self) -> np.ndarray:
        """Target position (3,) in metres, world frame."""
        return np.array((self.radius * math.cos(self.azimuth),
                         self.radius * math.sin(self.azimuth), self.height))


def in_test_sector(azimuth: float) -> bool:
    """True if ``azimuth`` (rad) lies in a held-out sector (boundaries included)."""
    return TEST_SECTOR[0] <= abs(azimuth) <= TEST_SECTOR[1]


class ReachFamily(TaskFamily):
    """Targets in front of the Panda; two azimuth sectors are held out for testing."""

    name = "reach"
    params_type = ReachParams
    split_doc = (
        "test iff 20 deg <= |azimuth| <= 35 deg (two held-out sectors, any radius and "
        "height); train otherwise. Sampling is uniform in azimuth, radius and height "
        "within the split's region.")

    def _sample_params(self, rng: np.random.Generator, split: Split) -> ReachParams:
        low, high = TEST_SECTOR
        if split == "test":
            magnitude = rng.uniform(low, high)
            azimuth = magnitude if rng.random() < 0.5 else -magnitude
        else:
            # Uniform on [-max, -high) U (-low, low) U (high, max]: map a draw on the
            # total train length onto the three pieces.
            outer = AZIMUTH_MAX - high
            draw = rng.uniform(0.0, 2 * outer + 2 * low)
            if draw < outer:
                azimuth = -AZIMUTH_MAX + draw
            elif draw < outer + 2 * low:
                azimuth = -low + (draw - outer)
            else:
                azimuth = high + (draw - outer - 2 * low)
            if in_test_sector(azimuth):  # only an exact boundary value can land here
                azimuth = 0.0
        return ReachParams(azimuth=float(azimuth), radius=float(rng.uniform(0.30, 0.65)),
                           height=float(rng.uniform(0.10, 0.50)))

    def split_of(self, params: TaskParams) -> Split:
        if not isinstance(params, ReachParams):
            raise ValueError(f"reach expects ReachParams, got {type(params).__name__}")
        return "test" if in_test_sector(params.azimuth) else "train"


class ReachEnv(MetaEnv):
    """Panda end-effector reaching to a hidden target.

    Observation (float32, shape (21,), unbounded Box): the Panda's proprioception only,
    ``[q (7, rad), dq (7, rad/s), EE position (3, m), EE velocity (3, m/s),
    finger opening (1, m, constant 0.02 here)]``. The target is **not** observed.

    Action (float32, shape (3,), in [-1, 1]): Cartesian EE displacement in units of
    5 cm per step (x, y, z in the world frame), tracked by differential IK and position
    motors; at 24 Hz the EE covers about 60 % of the commanded step within the step.
    Finite out-of-range values are clipped to [-1, 1]; wrong shapes and NaN/inf raise
    ``ValueError``. The EE target is clipped to the workspace box
    x in [0.10, 0.80], y in [-0.65, 0.65], z in [0.05, 0.70] m. The gripper stays fixed.

    Reward per step: ``-||ee - target|| - 0.01 * ||action||^2`` (metres).
    Success: ``||ee - target|| < 0.05 m`` at some step (``info["success"]`` latches).
    Episodes never terminate early; the registered TimeLimit truncates at 50 steps.
    ``info["distance"]`` is the EE-target distance (m).

    Physics: 240 Hz, 10 substeps per env step (24 Hz control). Resets restore the saved
    state and jitter the arm's home posture by up to +-0.02 rad per joint (``np_random``).
    Hidden task parameters: azimuth, radius, height (all of them).
    """

    family_type = ReachFamily
    camera = ((0.35, 0.0, 0.4), 1.2, 135.0, -30.0)
    substeps = 10

    def __init__(self, task: Task | None = None, render_mode: str | None = None) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (PROPRIO_DIM,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
        self._target = np.zeros(3)
        self._obs = np.zeros(PROPRIO_DIM, np.float32)
        super().__init__(task=task, render_mode=render_mode)

    def _build_scene(self) -> None:
        cid = self.client._client
        self._cid = cid
        self.robot = panda_scene(cid, max_ee_step=MAX_EE_STEP, finger_width=FINGER_WIDTH,
                           workspace_low=WORKSPACE_LOW, workspace_high=WORKSPACE_HIGH,
                           visual=self.render_mode is not None)
        # Target marker for rendering only: no collision shape, no mass, never observed.
        marker = pybullet.createVisualShape(pybullet.GEOM_SPHERE, radius=0.025,
                                            rgbaColor=(0.1, 0.8, 0.2, 0.7), physicsClientId=cid)
        self._marker = pybullet.createMultiBody(baseMass=0.0, baseVisualShapeIndex=marker,
                                                physicsClientId=cid)

    def _apply_task(self, task: Task) -> None:
        assert isinstance(task.params, ReachParams)
        self._target = task.params.position
        pybullet.resetBasePositionAndOrientation(
            self._marker, self._target.tolist(), (0.0, 0.0, 0.0, 1.0), physicsClientId=self._cid)
        self.robot.reset()

    def _reset_episode(self) -> None:
        self.robot.reset(arm_offset=self.np_random.uniform(-0.02, 0.02, 7))
        self._obs = self.robot.proprioception()

    def _observe(self) -> np.ndarray:
        return self._obs

    def _step(self, action: np.ndarray) -> tuple[float, bool, bool, dict[str, Any]]:
        robot, cid = self.robot, self._cid
        robot.apply_action(action)
        for _ in range(self.substeps):
            pybullet.stepSimulation(physicsClientId=cid)
        robot.read_state()
        self._obs = robot.proprioception()
        offset = robot.ee_pos - self._target
        distance = math.sqrt(offset @ offset)
        reward = -distance - ACTION_COST * float(action @ action)
        return reward, False, distance < SUCCESS_DISTANCE, {
            "distance": distance, "task_id": self._task.task_id}
