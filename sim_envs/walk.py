"""Walk family: the A1 on flat ground, walking forward or backward, the direction hidden.

The classic direction task of meta-RL (MAML's and ProMP's AntDir, HalfCheetahDir) on the
A1 of :mod:`sim_envs.legged` (same scene, proprioception, action, fall rule and gait
generator option as locomotion):

================ ======= =============== ==========================================
heading          rad     0 or pi         forward (+x) or backward (-x), hidden
friction         -       0.5-1.25        ground friction coefficient
payload          kg      0-3             mass added to the trunk (4.713 kg)
motor_strength   -       0.8-1.2         factor on every joint's torque limit
================ ======= =============== ==========================================

**Reward** per step, as in AntDir: the base velocity along the hidden direction (m/s)
minus a small control cost, ``v . (cos heading, sin heading) - 0.005 * sum_j a_j^2``.
Standing still earns about 0, walking the right way at 0.5 m/s about 0.5 per step, and
the wrong way as much below 0, so only the reward tells the two tasks apart. A fall ends
the episode (no penalty: the return is what was walked).

**Success** (``info["success"]``): latched once the base has moved at least 1 m along the
hidden direction (half of 0.5 m/s x 4 s) without a fall.

**Train / test split** (disjoint by construction, :meth:`WalkFamily.split_of`): a task is
*test* when its payload is above 2.25 kg (the heaviest quarter, a robot the policy never
carried in training); every other task is *train*. Both headings occur in both splits.

``observe_command=True`` appends the direction as a velocity command; the family is then an
ordinary multi-task problem (used by ``bench/gait_learnability.py`` to check that walking is
learnable at all). ``command_frame`` says how it is shown:

* ``"base"`` (default): 0.5 m/s along the heading in the yaw-aligned base frame, 2 values.
  It turns as the robot turns, so a walker may go backward by turning around until the
  command points ahead, and it does (``bench/results/meta_skill/walk/notes.md``).
* ``"world"``: the commanded velocity along the world x axis (+0.5 or -0.5 m/s), 1 value,
  constant over the episode. A walker told it must walk the way the command says without
  knowing its yaw.

``observe_yaw=True`` appends ``cos(yaw), sin(yaw)`` of the base as the observation's last 2
values (after the command and the gait phase; the robot starts at yaw 0), as an IMU's
heading gives it: with it a policy can read a world-frame context in its base frame
(``policy.rotate_context``, which reads them there; ``bench/walk_skill_prior.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim_envs.legged import SPAWN_POSITION, Dynamics, LeggedEnv
from sim_envs.tasks import ParamSpec, Split, Task, TaskFamily, TaskParams, param, sample_uniform

#: The two hidden headings (rad): forward and backward along the world x axis.
HEADINGS = (0.0, math.pi)
#: The speed (m/s) that success is measured against, and that observe_command shows.
WALK_SPEED = 0.5
#: Distance (m) along the heading that counts as success: half of WALK_SPEED x 4 s.
SUCCESS_DISTANCE = 0.5 * WALK_SPEED * 4.0
#: How observe_command shows the direction (see the module docstring).
COMMAND_FRAMES = ("base", "world")
#: Control cost per unit of squared action.
CONTROL_COST = 0.005
FRICTION_RANGE = (0.5, 1.25)
PAYLOAD_RANGE = (0.0, 3.0)
MOTOR_STRENGTH_RANGE = (0.8, 1.2)
#: Payloads above this (kg) are held out for test.
HELD_OUT_PAYLOAD = 2.25


@dataclass(frozen=True)
class WalkParams(TaskParams):
    """One walk task: the hidden direction and the robot's dynamics."""

    heading: float = param(ParamSpec(unit="rad", low=-math.pi, high=math.pi,
                                     doc="walking direction, 0 (forward) or pi (backward)"))
    friction: float = param(ParamSpec(low=FRICTION_RANGE[0], high=FRICTION_RANGE[1],
                                      doc="ground friction coefficient"))
    payload: float = param(ParamSpec(unit="kg", low=PAYLOAD_RANGE[0], high=PAYLOAD_RANGE[1],
                                     doc="mass added to the trunk"))
    motor_strength: float = param(ParamSpec(
        low=MOTOR_STRENGTH_RANGE[0], high=MOTOR_STRENGTH_RANGE[1],
        doc="factor on every joint's torque limit"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.heading not in HEADINGS:
            raise ValueError(f"WalkParams.heading must be 0 or pi, got {self.heading!r}")


class WalkFamily(TaskFamily):
    """A1 on flat ground walking forward or backward (hidden) under varied dynamics."""

    name = "walk"
    params_type = WalkParams
    split_doc = (
        f"test: payload above {HELD_OUT_PAYLOAD} kg; train: payload up to {HELD_OUT_PAYLOAD} "
        "kg. Both headings (0 and pi) occur in both splits."
    )

    def split_of(self, params: TaskParams) -> Split:
        if not isinstance(params, WalkParams):
            raise ValueError(f"expected WalkParams, got {type(params).__name__}")
        return "test" if params.payload > HELD_OUT_PAYLOAD else "train"

    def _sample_params(self, rng: np.random.Generator, split: Split) -> TaskParams:
        payload_range = ((HELD_OUT_PAYLOAD, PAYLOAD_RANGE[1]) if split == "test"
                         else (PAYLOAD_RANGE[0], HELD_OUT_PAYLOAD))
        params = WalkParams(
            heading=HEADINGS[int(rng.integers(len(HEADINGS)))],
            friction=sample_uniform(rng, FRICTION_RANGE),
            payload=sample_uniform(rng, payload_range),
            motor_strength=sample_uniform(rng, MOTOR_STRENGTH_RANGE),
        )
        if self.split_of(params) != split:  # the test range's closed end: draw again
            return self._sample_params(rng, split)
        return params


class WalkEnv(LeggedEnv):
    """The A1 walking along a hidden direction (see the module docstring).

    Args:
        task: initial task (default: the first train task of seed 0).
        render_mode: ``None`` or ``"rgb_array"``.
        gait_generator: add the action to a trot in place (:mod:`sim_envs.legged`).
        observe_command: append the direction as a velocity command.
        command_frame: ``"base"`` (2 values, turning with the robot) or ``"world"`` (the
            world-x velocity, 1 value, constant); see the module docstring.
        observe_yaw: append ``cos(yaw), sin(yaw)`` of the base as the observation's last
            2 values (after the command and the gait phase).
        action_scale_factor: factor on the joint offset of an action of 1
            (:mod:`sim_envs.legged`; up to about 2.2).
    """

    family_type = WalkFamily

    def __init__(self, task: Task | None = None, render_mode: str | None = None,
                 gait_generator: bool = False, observe_command: bool = False,
                 command_frame: str = "base", observe_yaw: bool = False,
                 action_scale_factor: float = 1.0) -> None:
        for name, flag in (("observe_command", observe_command), ("observe_yaw", observe_yaw)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be a bool, got {flag!r}")
        if command_frame not in COMMAND_FRAMES:
            raise ValueError(f"command_frame must be one of {COMMAND_FRAMES}, "
                             f"got {command_frame!r}")
        self.observe_command = observe_command
        self.command_frame = command_frame
        self.observe_yaw = observe_yaw
        command_size = 0 if not observe_command else 2 if command_frame == "base" else 1
        self.task_obs_size = command_size + (2 if observe_yaw else 0)
        super().__init__(task=task, render_mode=render_mode, gait_generator=gait_generator,
                         action_scale_factor=action_scale_factor)

    def dynamics_of(self, task: Task) -> Dynamics:
        p: WalkParams = task.params  # type: ignore[assignment]
        self._direction = np.array([math.cos(p.heading), math.sin(p.heading)])
        return Dynamics(friction=p.friction, payload=p.payload,
                        motor_strength=p.motor_strength)

    def _task_observation(self) -> list[np.ndarray]:
        if not self.observe_command:
            return []  # walk's default: no yaw to compute on every step
        if self.command_frame == "world":
            return [np.array([WALK_SPEED * self._direction[0]])]
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        dx, dy = WALK_SPEED * self._direction
        return [np.array([c * dx + s * dy, -s * dx + c * dy])]

    def _heading_observation(self) -> list[np.ndarray]:
        if not self.observe_yaw:
            return []
        return [np.array([math.cos(self.yaw), math.sin(self.yaw)])]

    def _reward(self, action: np.ndarray, fell: bool) -> tuple[float, bool, dict[str, Any]]:
        velocity = float(self._lin[0] * self._direction[0] + self._lin[1] * self._direction[1])
        reward = velocity - CONTROL_COST * float(np.sum(action * action))
        progress = float((self._pos[0] - SPAWN_POSITION[0]) * self._direction[0]
                         + (self._pos[1] - SPAWN_POSITION[1]) * self._direction[1])
        info = {"progress": progress, "velocity": velocity}
        return reward, progress >= SUCCESS_DISTANCE, info
