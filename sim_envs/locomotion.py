"""Locomotion family: an A1 quadruped following a joystick velocity command on terrain,
with hidden dynamics to adapt to (ground, payload, motor strength, a damaged leg).

The scene, physics step, proprioception, fall rule and gait generator are the legged
base's (:mod:`sim_envs.legged`). This module adds the command, the reward, the success
rule and the task distribution.

**The command is observed**, as a joystick gives it to every deployed legged controller
(legged_gym, IsaacLab, RMA): forward speed ``vx``, lateral speed ``vy`` (m/s) and yaw rate
``wz`` (rad/s), in the yaw-aligned base frame. It is drawn **per episode** from the env's
seeded generator (uniform over :data:`COMMAND_RANGES`), not per task: the task is what the
robot must adapt to (its dynamics), the command is the operator's input and changes at
will, so an adapted policy must follow any command on its task.
``env.reset(options={"command": (vx, vy, wz)})`` sets one instead (videos, tests).
``command_sampling="task"`` draws one command per task instead (from the task's
``terrain_seed``, same ranges): every episode of a task, before and after adaptation,
follows the same command, as when an operator holds the stick while the robot adapts.
It takes the command's variation out of the adaptation batch, so the inner step's
advantages compare episodes that differ only by the policy's noise.

**Task parameters** (:class:`LocomotionParams`, all hidden from the policy):

================ ======= ============ =============================================
terrain          -       5 types      flat, rough, slopes, stairs, obstacles
difficulty       -       0-1          scales the terrain (0 for flat)
terrain_seed     -       0-2^31-1     seeds the terrain's random parts
friction         -       0.3-1.25     ground friction coefficient
payload          kg      0-5          mass added to the trunk (4.713 kg)
payload_x        m       ±0.1         payload offset along the trunk (forward)
payload_y        m       ±0.05        payload offset across the trunk (left)
motor_strength   -       0.8-1.2      factor on every joint's torque limit
damaged_leg      -       5 choices    none, FR, FL, RR or RL
leg_strength     -       0.05-1       further factor on the damaged leg's three motors
                                      (1 when no leg is damaged)
================ ======= ============ =============================================

**Train / test split** (disjoint by construction, :meth:`LocomotionFamily.split_of`): a task
is *test* when any of these holds, and *train* otherwise:

* its terrain is not flat and its difficulty is above 0.8 (terrain harder than any
  training terrain);
* its payload is above 3 kg (heavier than any training payload);
* a leg is damaged to below 0.3 of its strength (a damage level never seen in training).

Test tasks are sampled with **one** held-out factor each (a third each: hard terrain,
heavy payload, weak leg), the other parameters from their training ranges, so the results
can be read per factor.

**Observation** (float32): the 45 proprioceptive values of :mod:`sim_envs.legged`, then the
command (``vx``, ``vy``, ``wz``: 3 values), then with ``observe_heights=True`` a height
scan, then the gait phase's sin and cos with ``gait_generator=True``: 48 to 71 values.

**Height scan** (``observe_heights=True``, off by default: the family's robot is blind):
the base's height above the ground at the 21 points of :data:`SCAN_X` x :data:`SCAN_Y`
(m, in the yaw-aligned base frame around the base; 0.3 m behind to 0.6 m ahead, two
points per 0.3 m stair), with uniform noise of ±:data:`SCAN_NOISE` m per point and step
(legged_gym's perceptive A1 measures such a grid, with the same noise); clipped to
±1 m. A riser ahead shows as a drop of the forward values by the step's height.

**Reward** per step, in the style of legged_gym's A1 config (its scales, not multiplied by
the time step), with ``v`` and ``w_z`` the base velocity and yaw rate in the yaw-aligned
frame and ``track(e) = exp(-e^2 / 0.15)``:

==================== ============================================================ =======
velocity tracking    ``track(|v_xy - c_xy|)``                                      1.0
yaw tracking         ``track(w_z - c_wz) * track(|v_xy - c_xy|)``                  0.5
vertical velocity    ``v_z^2``                                                     -2.0
roll / pitch rates   ``w_x^2 + w_y^2``                                             -0.05
torque               ``sum_j tau_j^2`` (N m)                                       -2e-4
action rate          ``sum_j (a_j - a_j,prev)^2``                                  -0.01
collisions           thigh and calf links touching the ground                      -1.0
feet air time        ``sum_feet (t_air - 0.2 s)`` at each touchdown, 0 when        1.0
                     ``|c_xy| < 0.1 m/s``
feet clearance       ``sum_feet (h_f - swing_height)^2 * tanh(2 |u_f,xy|)``,       -10.0
                     only with ``swing_height > 0`` (off by default)
==================== ============================================================ =======

The feet-clearance term (IsaacLab's Spot ``foot_clearance_reward``, linearised: its 0.5 x
``exp(-sum / 0.05)`` has slope 10 at the target) asks each moving foot to swing at
``swing_height`` m above the ground under it: ``h_f`` is the foot sphere's lowest point
above the height map, ``u_f`` the foot's velocity. A foot at rest costs nothing, so
standing still is not paid for.

The sum is clipped at 0 (legged_gym's ``only_positive_rewards``), so falling early never
pays; a fall ends the episode. The yaw term is gated by the velocity term so that standing
still at the commanded yaw rate earns nothing from it. What standing still earns against
a tracking policy, per terrain type: ``docs/families/locomotion.md#learnability-sb3-ppo``.

**Success** (``info["success"]``): latched at the first step where the distance walked
along the commanded direction (the integral of ``v_xy . c_xy / |c_xy|``) reaches half the
commanded distance, ``0.5 * |c_xy| * 4 s``, without a fall.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from sim_envs.legged import CONTROL_DT, EPISODE_SECONDS, Dynamics, LeggedEnv
from sim_envs.robots.a1 import FOOT_RADIUS, LEG_NAMES
from sim_envs.tasks import ParamSpec, Split, Task, TaskFamily, TaskParams, param, sample_uniform
from sim_envs.terrain import TERRAIN_TYPES

#: Per-episode command ranges: forward and lateral speed (m/s), yaw rate (rad/s).
COMMAND_RANGES = ((0.4, 1.0), (-0.2, 0.2), (-0.5, 0.5))
#: The height scan's points (m), along the heading and across it (``observe_heights``).
SCAN_X = (-0.3, -0.15, 0.0, 0.15, 0.3, 0.45, 0.6)
SCAN_Y = (-0.2, 0.0, 0.2)
#: Half-width (m) of the scan's uniform noise, and its clip (m).
SCAN_NOISE, SCAN_CLIP = 0.02, 1.0
_SCAN_GRID = np.array([(x, y) for x in SCAN_X for y in SCAN_Y])  # [21, 2]
#: ``command_sampling``: a new command every episode, or one per task.
CommandSampling = Literal["episode", "task"]
COMMAND_SAMPLINGS: tuple[CommandSampling, ...] = get_args(CommandSampling)
#: Fraction of the commanded distance (|c_xy| x episode duration) that counts as success.
SUCCESS_FRACTION = 0.5
TRACKING_SIGMA = 0.15  # (m/s)^2 and (rad/s)^2
#: Reward weights (legged_gym A1 scales); see the module docstring.
REWARD_WEIGHTS = {
    "tracking_lin": 1.0,
    "tracking_yaw": 0.5,
    "lin_vel_z": -2.0,
    "ang_vel_xy": -0.05,
    "torques": -2e-4,
    "action_rate": -0.01,
    "collision": -1.0,
    "feet_air_time": 1.0,
    "feet_clearance": -10.0,
}
#: Air time (s) a step must exceed to earn the air-time bonus.
AIR_TIME_TARGET = 0.2
#: Below this commanded speed (m/s) the air-time bonus is zero: standing is right then.
AIR_TIME_MIN_COMMAND = 0.1
#: Gain (s/m) on a foot's horizontal speed in the clearance term's ``tanh``: a foot moving
#: at 1 m/s counts 0.96, one at rest 0.
CLEARANCE_SPEED_GAIN = 2.0
#: Largest ``swing_height`` (m) accepted: about the A1's standing height.
MAX_SWING_HEIGHT = 0.3

#: Parameter ranges over both splits.
FRICTION_RANGE = (0.3, 1.25)
PAYLOAD_RANGE = (0.0, 5.0)
PAYLOAD_X_RANGE = (-0.1, 0.1)
PAYLOAD_Y_RANGE = (-0.05, 0.05)
MOTOR_STRENGTH_RANGE = (0.8, 1.2)
LEG_STRENGTH_RANGE = (0.05, 1.0)
DAMAGED_LEG_CHOICES: tuple[str, ...] = ("none",) + LEG_NAMES
#: Held out for test: non-flat difficulty above this, payload above this (kg), a damaged
#: leg's strength below this.
HELD_OUT_DIFFICULTY = 0.8
HELD_OUT_PAYLOAD = 3.0
HELD_OUT_LEG_STRENGTH = 0.3
#: The held-out factors a test task is sampled with (one each).
HELD_OUT_FACTORS: tuple[str, ...] = ("terrain", "payload", "leg")


@dataclass(frozen=True)
class LocomotionParams(TaskParams):
    """Hidden dynamics of one locomotion task (see the module docstring)."""

    terrain: str = param(ParamSpec(choices=TERRAIN_TYPES, doc="terrain type"))
    difficulty: float = param(ParamSpec(
        low=0.0, high=1.0, doc="terrain difficulty d (slope 0.4d, step 0.05+0.18d m, ...)"))
    terrain_seed: int = param(ParamSpec(low=0, high=2**31 - 1, doc="seed of the terrain",
                                        feature=False))
    friction: float = param(ParamSpec(low=FRICTION_RANGE[0], high=FRICTION_RANGE[1],
                                      doc="ground friction coefficient"))
    payload: float = param(ParamSpec(unit="kg", low=PAYLOAD_RANGE[0], high=PAYLOAD_RANGE[1],
                                     doc="mass added to the trunk"))
    payload_x: float = param(ParamSpec(unit="m", low=PAYLOAD_X_RANGE[0],
                                       high=PAYLOAD_X_RANGE[1],
                                       doc="payload offset forward of the trunk's centre"))
    payload_y: float = param(ParamSpec(unit="m", low=PAYLOAD_Y_RANGE[0],
                                       high=PAYLOAD_Y_RANGE[1],
                                       doc="payload offset left of the trunk's centre"))
    motor_strength: float = param(ParamSpec(
        low=MOTOR_STRENGTH_RANGE[0], high=MOTOR_STRENGTH_RANGE[1],
        doc="factor on every joint's torque limit"))
    damaged_leg: str = param(ParamSpec(choices=DAMAGED_LEG_CHOICES,
                                       doc="leg with weak motors, or none"))
    leg_strength: float = param(ParamSpec(
        low=LEG_STRENGTH_RANGE[0], high=LEG_STRENGTH_RANGE[1],
        doc="factor on the damaged leg's torque limits (1 when none)"))

    def __post_init__(self) -> None:
        super().__post_init__()
        seed = self.terrain_seed
        if isinstance(seed, bool) or not float(seed).is_integer():
            raise ValueError(f"LocomotionParams.terrain_seed must be an integer, got {seed!r}")
        object.__setattr__(self, "terrain_seed", int(seed))
        if self.terrain == "flat" and self.difficulty != 0.0:
            raise ValueError("LocomotionParams.difficulty must be 0 on flat terrain, "
                             f"got {self.difficulty!r}")
        if self.damaged_leg == "none" and self.leg_strength != 1.0:
            raise ValueError("LocomotionParams.leg_strength must be 1 when damaged_leg is "
                             f"'none', got {self.leg_strength!r}")

    def dynamics(self) -> Dynamics:
        """The simulated dynamics of these parameters."""
        return Dynamics(terrain=self.terrain, difficulty=self.difficulty,
                        terrain_seed=self.terrain_seed, friction=self.friction,
                        payload=self.payload, payload_x=self.payload_x,
                        payload_y=self.payload_y, motor_strength=self.motor_strength,
                        damaged_leg=self.damaged_leg, leg_strength=self.leg_strength)


def held_out_factors(params: LocomotionParams) -> list[str]:
    """The held-out factors (of :data:`HELD_OUT_FACTORS`) that ``params`` has."""
    factors = []
    if params.terrain != "flat" and params.difficulty > HELD_OUT_DIFFICULTY:
        factors.append("terrain")
    if params.payload > HELD_OUT_PAYLOAD:
        factors.append("payload")
    if params.damaged_leg != "none" and params.leg_strength < HELD_OUT_LEG_STRENGTH:
        factors.append("leg")
    return factors


def task_command(params: LocomotionParams) -> np.ndarray:
    """The command ``(vx, vy, wz)`` of a task under ``command_sampling="task"``: uniform over
    :data:`COMMAND_RANGES`, drawn from the task's ``terrain_seed`` (a seed stream of its own,
    so the terrain's random parts do not change it)."""
    rng = np.random.default_rng([params.terrain_seed, 0xC0])
    return np.array([rng.uniform(lo, hi) for lo, hi in COMMAND_RANGES])


class LocomotionFamily(TaskFamily):
    """A1 tasks: terrain, friction, payload and its offset, motor strength, a damaged leg."""

    name = "locomotion"
    params_type = LocomotionParams
    split_doc = (
        f"test: non-flat terrain with difficulty > {HELD_OUT_DIFFICULTY}, or payload > "
        f"{HELD_OUT_PAYLOAD} kg, or a damaged leg below {HELD_OUT_LEG_STRENGTH} of its "
        "strength (sampled with one of these each); train: everything else."
    )

    difficulty_groups = tuple(t for t in TERRAIN_TYPES if t != "flat")

    def split_of(self, params: TaskParams) -> Split:
        if not isinstance(params, LocomotionParams):
            raise ValueError(f"expected LocomotionParams, got {type(params).__name__}")
        return "test" if held_out_factors(params) else "train"

    def difficulty_group(self, task: Task) -> str | None:
        """The task's terrain type; ``None`` on flat ground (no difficulty)."""
        if not isinstance(task.params, LocomotionParams):
            raise ValueError(f"expected a locomotion task, got {task.family!r}")
        return None if task.params.terrain == "flat" else task.params.terrain

    def at_level(self, task: Task, level: float) -> Task:
        """The task with its terrain difficulty times ``level`` (same terrain seed,
        everything else unchanged). A training task stays one: scaling a difficulty down
        never makes it held out."""
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"level must be in [0, 1], got {level!r}")
        if not isinstance(task.params, LocomotionParams):
            raise ValueError(f"expected a locomotion task, got {task.family!r}")
        scaled = dataclasses.replace(task.params, difficulty=task.params.difficulty * level)
        return self._checked_task(scaled, task.split)

    def _sample_params(self, rng: np.random.Generator, split: Split) -> TaskParams:
        held_out = (HELD_OUT_FACTORS[int(rng.integers(len(HELD_OUT_FACTORS)))]
                    if split == "test" else None)
        terrain = TERRAIN_TYPES[int(rng.integers(len(TERRAIN_TYPES)))]
        if held_out == "terrain":
            terrain = TERRAIN_TYPES[1 + int(rng.integers(len(TERRAIN_TYPES) - 1))]
        difficulty = sample_uniform(
            rng, (HELD_OUT_DIFFICULTY, 1.0) if held_out == "terrain"
            else (0.0, HELD_OUT_DIFFICULTY))
        payload = sample_uniform(rng, (HELD_OUT_PAYLOAD, PAYLOAD_RANGE[1])
                                 if held_out == "payload" else (0.0, HELD_OUT_PAYLOAD))
        # A fifth of training tasks have every leg intact; every leg test task has one damaged.
        leg_index = int(rng.integers(len(DAMAGED_LEG_CHOICES)))
        if held_out == "leg":
            leg_index = 1 + int(rng.integers(len(LEG_NAMES)))
        leg_strength = sample_uniform(rng, (LEG_STRENGTH_RANGE[0], HELD_OUT_LEG_STRENGTH)
                                      if held_out == "leg"
                                      else (HELD_OUT_LEG_STRENGTH, LEG_STRENGTH_RANGE[1]))
        params = LocomotionParams(
            terrain=terrain,
            difficulty=0.0 if terrain == "flat" else difficulty,
            terrain_seed=int(rng.integers(2**31 - 1)),
            friction=sample_uniform(rng, FRICTION_RANGE),
            payload=payload,
            payload_x=sample_uniform(rng, PAYLOAD_X_RANGE),
            payload_y=sample_uniform(rng, PAYLOAD_Y_RANGE),
            motor_strength=sample_uniform(rng, MOTOR_STRENGTH_RANGE),
            damaged_leg=DAMAGED_LEG_CHOICES[leg_index],
            leg_strength=1.0 if leg_index == 0 else leg_strength,
        )
        if self.split_of(params) != split:  # a range's closed end: draw again (never seen)
            return self._sample_params(rng, split)
        return params


class LocomotionEnv(LeggedEnv):
    """A1 following an observed velocity command under hidden dynamics (module docstring).

    Args:
        task: initial task (default: the first train task of seed 0).
        render_mode: ``None`` or ``"rgb_array"`` (camera follows the robot).
        gait_generator: add the action to a trot in place (:mod:`sim_envs.legged`).
        command_sampling: ``"episode"`` (a new command every episode) or ``"task"`` (one
            command per task, drawn from its ``terrain_seed``); see the module docstring.
        observe_heights: append the height scan (21 values after the command; see the
            module docstring).
        swing_height: target foot clearance (m) of the feet-clearance reward term; 0 (the
            default) leaves the term out.
        action_scale_factor: factor on the joint offset of an action of 1
            (:mod:`sim_envs.legged`; up to about 2.2).
    """

    family_type = LocomotionFamily

    def __init__(self, task: Task | None = None, render_mode: str | None = None,
                 gait_generator: bool = False,
                 command_sampling: CommandSampling = "episode",
                 observe_heights: bool = False, swing_height: float = 0.0,
                 action_scale_factor: float = 1.0) -> None:
        if command_sampling not in COMMAND_SAMPLINGS:
            raise ValueError(f"command_sampling must be one of {list(COMMAND_SAMPLINGS)}, "
                             f"got {command_sampling!r}")
        if not isinstance(observe_heights, bool):
            raise ValueError(f"observe_heights must be a bool, got {observe_heights!r}")
        if (isinstance(swing_height, bool) or not isinstance(swing_height, (int, float))
                or not 0.0 <= swing_height <= MAX_SWING_HEIGHT):
            raise ValueError(f"swing_height must be a number of metres in [0, "
                             f"{MAX_SWING_HEIGHT}], got {swing_height!r}")
        self.swing_height = float(swing_height)
        self.command_sampling = command_sampling
        self.observe_heights = observe_heights
        self.task_obs_size = 3 + (len(_SCAN_GRID) if observe_heights else 0)
        super().__init__(task=task, render_mode=render_mode, gait_generator=gait_generator,
                         action_scale_factor=action_scale_factor)

    def dynamics_of(self, task: Task) -> Dynamics:
        return task.params.dynamics()  # type: ignore[attr-defined]

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset; ``options={"command": (vx, vy, wz)}`` fixes the episode's command."""
        self._fixed_command = None
        if options and "command" in options:
            command = np.asarray(options["command"], dtype=np.float64)
            if command.shape != (3,) or not np.all(np.isfinite(command)):
                raise ValueError(f"command must be 3 finite values (vx, vy, wz), "
                                 f"got {options['command']!r}")
            self._fixed_command = command
        return super().reset(seed=seed, options=options)

    @property
    def command(self) -> np.ndarray:
        """This episode's command ``(vx, vy, wz)`` (m/s, m/s, rad/s), yaw-aligned frame."""
        return self._command.copy()

    def _start_episode(self) -> None:
        if self._fixed_command is not None:
            self._command = self._fixed_command.copy()
        elif self.command_sampling == "task":
            self._command = task_command(self.get_task().params)  # type: ignore[arg-type]
        else:
            self._command = np.array([self.np_random.uniform(lo, hi)
                                      for lo, hi in COMMAND_RANGES])
        speed = float(np.hypot(self._command[0], self._command[1]))
        self._command_dir = self._command[:2] / speed if speed > 0 else np.zeros(2)
        self._success_distance = SUCCESS_FRACTION * speed * EPISODE_SECONDS
        self._progress = 0.0
        self._air_time = np.zeros(4)

    def _build_scene(self) -> None:
        self._command = np.zeros(3)
        self._fixed_command: np.ndarray | None = None  # set by reset(options={"command": ...})
        super()._build_scene()

    def _task_observation(self) -> list[np.ndarray]:
        if not self.observe_heights:
            return [self._command]
        return [self._command, self.height_scan()]

    def height_scan(self, noise: bool = True) -> np.ndarray:
        """The base's height above the ground at the scan points ``[21]`` (m; module
        docstring), with the scan's noise unless ``noise`` is False."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        x = self._pos[0] + c * _SCAN_GRID[:, 0] - s * _SCAN_GRID[:, 1]
        y = self._pos[1] + s * _SCAN_GRID[:, 0] + c * _SCAN_GRID[:, 1]
        scan = self._pos[2] - self.terrain.heights_at(x, y)
        if noise:
            scan = scan + self.np_random.uniform(-SCAN_NOISE, SCAN_NOISE, len(scan))
        return np.clip(scan, -SCAN_CLIP, SCAN_CLIP)

    def feet_clearance_error(self) -> float:
        """The feet-clearance term before its weight: ``sum_f (h_f - swing_height)^2 *
        tanh(2 |u_f,xy|)`` (m^2), ``h_f`` each foot's lowest point above the ground under
        it, ``u_f`` its velocity (module docstring)."""
        feet, feet_velocity = self.robot.foot_states()
        clearance = (feet[:, 2] - FOOT_RADIUS
                     - self.terrain.heights_at(feet[:, 0], feet[:, 1]))
        moving = np.tanh(CLEARANCE_SPEED_GAIN * np.hypot(feet_velocity[:, 0],
                                                         feet_velocity[:, 1]))
        return float(np.sum((clearance - self.swing_height) ** 2 * moving))

    def _reward(self, action: np.ndarray, fell: bool) -> tuple[float, bool, dict[str, Any]]:
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        vx = c * self._lin[0] + s * self._lin[1]  # yaw-aligned frame
        vy = -s * self._lin[0] + c * self._lin[1]
        ang_base = self._rot.T @ self._ang
        cx, cy, cwz = self._command
        lin_err = (vx - cx) ** 2 + (vy - cy) ** 2
        tracking_lin = math.exp(-lin_err / TRACKING_SIGMA)
        tracking_yaw = tracking_lin * math.exp(-(self._ang[2] - cwz) ** 2 / TRACKING_SIGMA)

        # Air time: a foot in the air accumulates it; touching down pays what exceeds the
        # target and starts the count again.
        touchdown = self._foot_contact & (self._air_time > 0.0)
        air_bonus = float(np.sum((self._air_time - AIR_TIME_TARGET) * touchdown))
        if math.hypot(cx, cy) < AIR_TIME_MIN_COMMAND:
            air_bonus = 0.0
        self._air_time = np.where(self._foot_contact, 0.0, self._air_time + CONTROL_DT)

        terms = {
            "tracking_lin": tracking_lin,
            "tracking_yaw": tracking_yaw,
            "lin_vel_z": float(self._lin[2] ** 2),
            "ang_vel_xy": float(ang_base[0] ** 2 + ang_base[1] ** 2),
            "torques": float(np.sum(self._tau ** 2)),
            "action_rate": float(np.sum((action - self._prev_action) ** 2)),
            "collision": float(self._leg_collisions),
            "feet_air_time": air_bonus,
        }
        if self.swing_height > 0.0:
            terms["feet_clearance"] = self.feet_clearance_error()
        reward = max(0.0, sum(REWARD_WEIGHTS[k] * v for k, v in terms.items()))

        self._progress += (vx * self._command_dir[0] + vy * self._command_dir[1]) * CONTROL_DT
        success = self._progress >= self._success_distance > 0.0
        info = {"progress": self._progress, "tracking_reward": tracking_lin,
                "feet_air_time": air_bonus, "command": self._command.copy()}
        return reward, success, info
