"""Locomotion family: terrain generation, in-place heightfield, task knobs, reward, split."""

from __future__ import annotations

import dataclasses
import math

import gymnasium as gym
import numpy as np
import pybullet
import pytest
from envtools import trace
from pybullet_utils.bullet_client import BulletClient

import sim_envs  # noqa: F401  (registers the gymnasium ids)
from sim_envs.legged import (
    CONTROL_DT,
    EPISODE_SECONDS,
    GAIT_FREQUENCY,
    GAIT_LIFT,
    PHYSICS_DT,
    SPAWN_POSITION,
    trot_offsets,
)
from sim_envs.locomotion import (
    COMMAND_RANGES,
    HELD_OUT_DIFFICULTY,
    HELD_OUT_FACTORS,
    HELD_OUT_LEG_STRENGTH,
    HELD_OUT_PAYLOAD,
    REWARD_WEIGHTS,
    SUCCESS_FRACTION,
    TRACKING_SIGMA,
    LocomotionEnv,
    LocomotionFamily,
    LocomotionParams,
    held_out_factors,
    task_command,
)
from sim_envs.robots.a1 import A1, ACTION_SCALE, STANDING_POSE, TRUNK_MASS
from sim_envs.terrain import (
    HEIGHT_LIMIT,
    PLATFORM_HALF_WIDTH,
    TERRAIN_TYPES,
    cell_coordinates,
    rough_amplitude,
    step_height,
    terrain_heights,
)

BASE = LocomotionParams(terrain="flat", difficulty=0.0, terrain_seed=0, friction=1.0,
                        payload=0.0, payload_x=0.0, payload_y=0.0, motor_strength=1.0,
                        damaged_leg="none", leg_strength=1.0)


def make_task(family: LocomotionFamily, **changes):
    return family.make_task(dataclasses.replace(BASE, **changes))


@pytest.fixture(scope="module")
def env():
    env = LocomotionEnv()
    yield env
    env.close()


# ----------------------------------------------------------------------------- terrain
@pytest.mark.parametrize("kind", TERRAIN_TYPES)
def test_terrain_is_deterministic_and_keeps_platform_and_pinned_corners(kind):
    a = terrain_heights(kind, 0.6, 123)
    b = terrain_heights(kind, 0.6, 123)
    assert a.dtype == np.float32 and a.shape == (128, 128)
    assert np.array_equal(a, b)
    coords = cell_coordinates()
    platform = np.ix_(np.abs(coords) <= PLATFORM_HALF_WIDTH, np.abs(coords) <= PLATFORM_HALF_WIDTH)
    assert np.all(a[platform] == 0.0)
    assert a[0, 0] == -HEIGHT_LIMIT and a[-1, -1] == HEIGHT_LIMIT
    assert np.abs(a).max() <= HEIGHT_LIMIT


def test_terrain_differs_across_types_seeds_and_difficulties():
    maps = {kind: terrain_heights(kind, 0.6, 7) for kind in TERRAIN_TYPES}
    for i, k1 in enumerate(TERRAIN_TYPES):
        for k2 in TERRAIN_TYPES[i + 1:]:
            assert not np.array_equal(maps[k1], maps[k2]), (k1, k2)
    for kind in ("rough", "obstacles"):
        assert not np.array_equal(terrain_heights(kind, 0.6, 7), terrain_heights(kind, 0.6, 8))
    for kind in ("rough", "slopes", "stairs", "obstacles"):
        assert not np.array_equal(terrain_heights(kind, 0.2, 7), terrain_heights(kind, 0.9, 7))
    assert np.array_equal(terrain_heights("flat", 0.0, 1), terrain_heights("flat", 0.0, 2))


def test_terrain_difficulty_mapping():
    inner = slice(1, -1)  # skip the pinned corners
    for d in (0.0, 0.5, 1.0):
        rough = terrain_heights("rough", d, 3)[inner, inner]
        assert rough.max() - rough.min() <= rough_amplitude(d) + 1e-6
        assert rough.max() - rough.min() > 0.5 * rough_amplitude(d)
        stairs = terrain_heights("stairs", d, 3)[inner, inner]
        levels = np.unique(np.round(np.abs(stairs) / step_height(d), 4))
        assert np.allclose(levels, np.round(levels)), "stair heights are whole steps"
    slopes = terrain_heights("slopes", 1.0, 3)
    row = np.abs(slopes[64, 80:100].astype(np.float64))  # along +x (y = 0.05 m), off platform
    assert np.allclose(np.diff(row), 0.4 * 0.1, rtol=1e-3)  # cone gradient 0.4 d, 0.1 m cells


def test_terrain_rejects_bad_input():
    with pytest.raises(ValueError, match="terrain type"):
        terrain_heights("lava", 0.5, 0)
    with pytest.raises(ValueError, match="difficulty"):
        terrain_heights("rough", 1.5, 0)
    with pytest.raises(ValueError, match="seed"):
        terrain_heights("rough", 0.5, -1)


# ----------------------------------------------------------------------------- heightfield
def test_heightfield_is_replaced_in_place_and_matches_the_map(env):
    family = env.family
    c = env.client
    bodies = c.getNumBodies()
    shape_id = env.terrain.shape_id
    probe_before = c.createCollisionShape(pybullet.GEOM_SPHERE, radius=0.01)
    for i in range(12):
        kind = TERRAIN_TYPES[i % len(TERRAIN_TYPES)]
        env.set_task(make_task(family, terrain=kind, difficulty=0.5 if kind != "flat" else 0.0,
                               terrain_seed=i))
        env.reset(seed=i)
        assert env.terrain.shape_id == shape_id
        assert c.getNumBodies() == bodies
    probe_after = c.createCollisionShape(pybullet.GEOM_SPHERE, radius=0.01)
    assert probe_after == probe_before + 1, "task switches created collision shapes"

    # The simulated ground is the generated map (checks the update and the axis convention).
    env.set_task(make_task(family, terrain="stairs", difficulty=1.0, terrain_seed=1))
    for x, y in [(1.05, 0.02), (-2.02, 0.55), (0.33, -3.01), (2.51, 2.04)]:
        hit = c.rayTest([x, y, 5.0], [x, y, -5.0])[0]
        assert hit[0] == env.terrain.body_id
        assert hit[3][2] == pytest.approx(env.terrain.height_at(x, y), abs=0.02)
        assert env.terrain.lowest_height_near(x, y, 0.2) <= env.terrain.height_at(x, y) + 1e-6
    assert env.terrain.height_at(2.51, 2.04) > 0.3 or env.terrain.height_at(2.51, 2.04) < -0.3


def test_friction_payload_motor_strength_and_leg_damage_are_applied(env):
    task = make_task(env.family, friction=0.42, payload=2.5, motor_strength=0.8,
                     damaged_leg="RR", leg_strength=0.5)
    env.set_task(task)
    env.reset(seed=0)
    c = env.client
    assert c.getDynamicsInfo(env.terrain.body_id, -1)[1] == pytest.approx(0.42)
    assert c.getDynamicsInfo(env.robot.body_id, -1)[0] == pytest.approx(TRUNK_MASS + 2.5)
    factors = np.full(12, 0.8)
    factors[6:9] *= 0.5  # RR is the third leg
    limits = factors * env.robot.effort_limits
    assert np.allclose(env.robot.max_forces, limits)
    # A full-scale action saturates some motors: torques reach but never exceed the limit.
    _, _, _, _, _ = env.step(np.ones(12, dtype=np.float32))
    tau = np.abs(env.robot.joint_states()[2])
    assert np.all(tau <= limits + 1e-6)
    assert np.any(np.isclose(tau, limits, rtol=1e-3))

    env.set_task(make_task(env.family, friction=1.2, payload=0.0, motor_strength=1.2))
    assert c.getDynamicsInfo(env.terrain.body_id, -1)[1] == pytest.approx(1.2)
    assert c.getDynamicsInfo(env.robot.body_id, -1)[0] == pytest.approx(TRUNK_MASS)
    assert np.allclose(env.robot.max_forces, 1.2 * env.robot.effort_limits)


def _settle(env, steps):
    for _ in range(steps):
        env.step(np.zeros(12, dtype=np.float32))


def test_friction_and_payload_change_the_motion(env):
    slides = {}
    for friction in (0.3, 1.25):  # pushed sideways: slides further on slippery ground
        env.set_task(make_task(env.family, friction=friction))
        env.reset(seed=0)
        env.client.resetBaseVelocity(env.robot.body_id, [0.0, 1.5, 0.0], [0.0, 0.0, 0.0])
        _settle(env, 15)
        slides[friction] = env.robot.base_state()[0][1]
    assert slides[0.3] > slides[1.25] + 0.02

    torques = {}
    for payload in (0.0, 3.0):  # standing still: the legs carry the extra weight
        env.set_task(make_task(env.family, payload=payload))
        env.reset(seed=0)
        _settle(env, 25)
        torques[payload] = np.abs(env.robot.joint_states()[2]).sum()
    assert torques[3.0] > 1.1 * torques[0.0]


def _leg_loads_after(env, steps, **changes):
    """Sum of |torque| (N m) of each leg (FR, FL, RR, RL) after standing ``steps`` steps."""
    env.set_task(make_task(env.family, **changes))
    env.reset(seed=0)
    _settle(env, steps)
    return np.abs(env.robot.joint_states()[2]).reshape(4, 3).sum(axis=1)


def test_payload_offset_moves_the_load_onto_the_legs_under_it(env):
    def rear_minus_front(loads):
        return loads[2] + loads[3] - loads[0] - loads[1]

    def left_minus_right(loads):
        return loads[1] + loads[3] - loads[0] - loads[2]

    centred = _leg_loads_after(env, 25, payload=5.0)
    ahead = _leg_loads_after(env, 25, payload=5.0, payload_x=0.1)
    behind = _leg_loads_after(env, 25, payload=5.0, payload_x=-0.1)
    left = _leg_loads_after(env, 25, payload=5.0, payload_y=0.05)
    assert rear_minus_front(ahead) < rear_minus_front(centred) - 5.0
    assert rear_minus_front(behind) > rear_minus_front(centred) + 5.0
    assert left_minus_right(left) > left_minus_right(centred) + 3.0


# ----------------------------------------------------------------------------- dynamics
def test_the_height_scan_sees_the_first_step_ahead():
    """``observe_heights``: 21 values after the command, the base's height above the
    ground; on stairs the points beyond the start platform's edge (0.5 m ahead) drop or
    rise by the step's height, the others show the platform."""
    env = LocomotionEnv(observe_heights=True)
    try:
        assert env.observation_space.shape == (69,)
        d = 0.5
        for seed in range(4):
            env.set_task(make_task(env.family, terrain="stairs", difficulty=d,
                                   terrain_seed=seed))
            obs, _ = env.reset(seed=0, options={"command": (0.5, 0.0, 0.0)})
            scan = env.height_scan(noise=False)
            assert np.abs(obs[48:69] - scan).max() <= 0.02 + 1e-6  # the noise's half-width
            rows = scan.reshape(7, 3)  # 7 points along the heading x 3 across
            first_step = env.terrain.height_at(env._pos[0] + 0.6, env._pos[1])
            assert abs(abs(first_step) - step_height(d)) < 0.02  # the robot faces +x
            np.testing.assert_allclose(rows[:6], env._pos[2], atol=1e-5)  # the platform
            np.testing.assert_allclose(rows[6], env._pos[2] - first_step, atol=0.02)
        with pytest.raises(ValueError, match="observe_heights"):
            LocomotionEnv(observe_heights=1)
    finally:
        env.close()


def test_the_feet_clearance_term_charges_low_moving_feet_only():
    """``swing_height``: the term is 0 for feet at rest (standing still is not charged),
    equals its formula from the feet's states, lowers the reward by its weight, and is
    absent without the option."""
    env = LocomotionEnv(swing_height=0.1)
    plain = LocomotionEnv()
    try:
        for e in (env, plain):
            e.reset(seed=0, options={"command": (0.5, 0.0, 0.0)})
        for _ in range(20):  # settle on the standing pose: feet at rest
            env.step(np.zeros(12, dtype=np.float32))
        assert env.feet_clearance_error() < 1e-4
        rng = np.random.default_rng(0)
        actions = rng.uniform(-1, 1, size=(30, 12)).astype(np.float32)
        errors = []
        for a in actions:
            env.step(a)
            feet, velocity = env.robot.foot_states()
            height = feet[:, 2] - 0.02 - env.terrain.heights_at(feet[:, 0], feet[:, 1])
            expected = np.sum((height - 0.1) ** 2 * np.tanh(2 * np.hypot(velocity[:, 0],
                                                                         velocity[:, 1])))
            errors.append(env.feet_clearance_error())
            assert errors[-1] == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert max(errors) > 1e-3  # thrashing feet move near the ground
        # Same state, with and without the option: the reward differs by the weighted term.
        for e in (env, plain):
            e.reset(seed=1, options={"command": (0.5, 0.0, 0.0)})
        charged_while_paid = 0
        for a in 0.5 * actions[:15]:
            _, r_with, *_ = env.step(a)
            _, r_without, *_ = plain.step(a)
            charged = REWARD_WEIGHTS["feet_clearance"] * env.feet_clearance_error()
            # Both sums are clipped at 0; a clipped plain reward stays clipped when charged.
            assert r_with == pytest.approx(max(0.0, r_without + charged), abs=1e-9)
            charged_while_paid += r_without > 0 and charged < -1e-3
        assert charged_while_paid >= 3
        for bad in (-0.01, 0.5, float("nan"), True, "0.1"):
            with pytest.raises(ValueError, match="swing_height"):
                LocomotionEnv(swing_height=bad)
    finally:
        env.close()
        plain.close()


def test_the_action_scale_bounds_how_high_a_foot_can_rise():
    """With the trunk held, the default action scale lets a front foot rise at most 10 cm
    above its standing position, below every held-out stairs step (19-23 cm); a factor of 2
    lets it rise 20 cm. Factors the joint limits do not allow are refused."""
    client = BulletClient(pybullet.DIRECT)
    try:
        lifts = {}
        for factor in (1.0, 2.0):
            robot = A1(client, (0.0, 0.0, 1.0), visual=False, action_scale_factor=factor)
            robot.reset_pose((0.0, 0.0, 1.0), STANDING_POSE)
            standing = robot.foot_states()[0][0, 2]
            best = -1.0
            for thigh in np.linspace(-1, 1, 21):
                for calf in np.linspace(-1, 1, 21):
                    action = np.zeros(12)
                    action[1:3] = thigh, calf  # the FR leg
                    robot.reset_pose((0.0, 0.0, 1.0), robot.action_to_targets(action))
                    best = max(best, robot.foot_states()[0][0, 2] - standing)
            lifts[factor] = best
        assert 0.095 < lifts[1.0] < 0.105
        assert lifts[2.0] > 0.20
        for bad in (2.3, 0.0, -1.0, float("nan"), True):
            with pytest.raises(ValueError, match="action_scale_factor"):
                A1(client, visual=False, action_scale_factor=bad)
    finally:
        client.disconnect()
    env = LocomotionEnv(action_scale_factor=2.0)
    try:
        np.testing.assert_allclose(env.robot.action_to_targets(np.ones(12)),
                                   STANDING_POSE + 2.0 * ACTION_SCALE)
    finally:
        env.close()


def test_reset_observation_layout(env):
    env.set_task(make_task(env.family))
    obs, info = env.reset(seed=3)
    assert obs.shape == (48,) and obs.dtype == np.float32
    assert np.allclose(obs[0:3], [0.0, 0.0, -1.0], atol=1e-6)  # gravity in base frame
    assert np.allclose(obs[3:9], 0.0)  # at rest
    assert np.all(np.abs(obs[9:21]) <= 0.05 + 1e-6) and np.any(obs[9:21] != 0.0)
    assert np.all(obs[33:45] == 0.0)  # no previous action
    assert np.array_equal(obs[45:48], env.command.astype(np.float32))
    assert info["success"] is False


def test_falling_terminates(env):
    env.set_task(make_task(env.family))
    env.reset(seed=0)
    upside_down = pybullet.getQuaternionFromEuler([math.pi, 0.0, 0.0])
    env.client.resetBasePositionAndOrientation(env.robot.body_id, [0, 0, 0.3], upside_down)
    for _ in range(50):
        _, reward, terminated, truncated, info = env.step(np.zeros(12, dtype=np.float32))
        if terminated:
            break
    assert terminated and not truncated
    assert info["fall"] is True and not info["success"]
    assert reward >= 0.0  # clipped at 0: a fall costs the rewards it forgoes

    # Collapsed upright (legs folded, base 7 cm high, trunk off the ground): a fall too.
    env.reset(seed=0)
    folded = np.array([0.0, 1.2, -2.69] * 4)
    env.robot.reset_pose((0.0, 0.0, 0.075), folded)
    hold = np.clip((folded - STANDING_POSE) / ACTION_SCALE, -1, 1).astype(np.float32)
    _, reward, terminated, _, info = env.step(hold)
    assert terminated and info["fall"] is True
    assert env.robot.base_state()[1][2, 2] > 0.99  # upright: the height rule caught it

    # Standing still on flat ground does not fall.
    env.reset(seed=0)
    for _ in range(25):
        _, _, terminated, _, info = env.step(np.zeros(12, dtype=np.float32))
        assert not terminated and not info["fall"]


def _reward_with_base_velocity(env, command, velocity, yaw_rate=0.0):
    env.reset(seed=0, options={"command": command})
    # In the air, so no contact slows the base down within the step.
    env.client.resetBasePositionAndOrientation(env.robot.body_id, [0, 0, 1.5], [0, 0, 0, 1])
    env.client.resetBaseVelocity(env.robot.body_id, list(velocity), [0, 0, yaw_rate])
    _, reward, terminated, _, info = env.step(np.zeros(12, dtype=np.float32))
    assert not terminated
    return reward, info


def test_reward_prefers_commanded_velocity_over_standing(env):
    env.set_task(make_task(env.family))
    command = (0.7, -0.2, 0.4)
    moving, moving_info = _reward_with_base_velocity(env, command, (0.7, -0.2, 0.0), 0.4)
    still, still_info = _reward_with_base_velocity(env, command, (0.0, 0.0, 0.0))
    turning, _ = _reward_with_base_velocity(env, command, (0.0, 0.0, 0.0), 0.4)
    wrong, _ = _reward_with_base_velocity(env, command, (-0.7, 0.2, 0.0))
    assert moving > 1.0 and moving > 5 * max(still, turning)
    assert still >= wrong >= 0.0  # clipped at 0
    assert moving_info["tracking_reward"] > 0.95
    assert still_info["tracking_reward"] == pytest.approx(
        math.exp(-(0.7**2 + 0.2**2) / TRACKING_SIGMA), abs=0.02)
    # Turning on the spot at the commanded rate earns little: the yaw term is gated.
    assert turning < still + REWARD_WEIGHTS["tracking_yaw"] * still_info["tracking_reward"]


def test_commands_are_drawn_per_episode_in_range_and_observed(env):
    env.set_task(make_task(env.family))
    commands = []
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        assert obs.shape == (48,)
        assert np.array_equal(obs[45:48], env.command.astype(np.float32))
        commands.append(env.command)
    commands = np.array(commands)
    for k, (lo, hi) in enumerate(COMMAND_RANGES):
        assert np.all((commands[:, k] >= lo) & (commands[:, k] <= hi))
        assert commands[:, k].std() > 0.1 * (hi - lo)
    env.reset(seed=0)
    first = env.command
    env.reset(seed=0)
    assert np.array_equal(env.command, first)  # seeded
    env.reset(seed=3, options={"command": (0.5, 0.1, -0.2)})
    assert np.allclose(env.command, (0.5, 0.1, -0.2))
    with pytest.raises(ValueError, match="command"):
        env.reset(options={"command": (0.5, float("nan"), 0.0)})


def test_command_sampling_task_holds_one_command_per_task():
    env = LocomotionEnv(command_sampling="task")
    try:
        first, second = (make_task(env.family, terrain_seed=s) for s in (11, 12))
        env.set_task(first)
        commands = [env.reset(seed=seed)[0][45:48] for seed in range(5)]
        assert all(np.array_equal(c, commands[0]) for c in commands)  # every episode
        assert np.allclose(commands[0], task_command(first.params))
        for k, (lo, hi) in enumerate(COMMAND_RANGES):
            assert lo <= commands[0][k] <= hi
        env.set_task(second)
        assert not np.allclose(env.reset(seed=0)[0][45:48], commands[0])  # another task
        env.reset(seed=0, options={"command": (0.5, 0.0, 0.0)})  # an explicit one wins
        assert np.allclose(env.command, (0.5, 0.0, 0.0))
    finally:
        env.close()
    with pytest.raises(ValueError, match="command_sampling"):
        LocomotionEnv(command_sampling="step")


def test_feet_air_time_pays_at_touchdown_only_when_walking_is_commanded(env):
    env.set_task(make_task(env.family))
    for command, paid in (((0.8, 0.0, 0.0), True), ((0.05, 0.0, 0.0), False)):
        env.reset(seed=0, options={"command": command})
        env.robot.reset_pose((0.0, 0.0, 0.45), STANDING_POSE)  # dropped: 0.3 s in the air
        infos = []
        for _ in range(30):
            *_, info = env.step(np.zeros(12, dtype=np.float32))
            infos.append(info)
        base = env.unwrapped if hasattr(env, "unwrapped") else env
        assert not infos[-1]["fall"]
        assert (base._air_time == 0.0).any()  # the feet came down
        landed = [i for i in infos if i["feet_air_time"] != 0.0]
        assert bool(landed) is paid


def test_success_latches_at_half_the_commanded_distance(env):
    env.set_task(make_task(env.family))
    command = (0.6, 0.2, 0.0)
    speed = math.hypot(0.6, 0.2)
    needed = SUCCESS_FRACTION * speed * EPISODE_SECONDS
    env.reset(seed=0, options={"command": command})
    # Walk the commanded velocity exactly (teleport along it): success once half-way.
    direction = np.array(command[:2]) / speed
    steps_needed = needed / (speed * CONTROL_DT)
    successes = []
    for step in range(1, int(steps_needed) + 3):
        x, y = direction * speed * CONTROL_DT * step
        env.client.resetBasePositionAndOrientation(
            env.robot.body_id, [x, y, SPAWN_POSITION[2]], [0, 0, 0, 1])
        env.client.resetBaseVelocity(env.robot.body_id, [*(direction * speed), 0.0],
                                     [0, 0, 0])
        _, _, terminated, _, info = env.step(np.zeros(12, dtype=np.float32))
        assert not terminated
        successes.append(info["success"])
    assert not successes[int(steps_needed) - 3]
    assert successes[-1]
    # Latched: standing still afterwards does not revoke it.
    *_, info = env.step(np.zeros(12, dtype=np.float32))
    assert info["success"]


def test_trajectories_are_identical_across_terrain_switches():
    family = LocomotionFamily()
    task_a = make_task(family, terrain="obstacles", difficulty=0.6, terrain_seed=4)
    task_b = make_task(family, terrain="slopes", difficulty=0.7, terrain_seed=9)
    actions = np.random.default_rng(0).uniform(-1, 1, (40, 12)).astype(np.float32)

    fresh, used = LocomotionEnv(task=task_a), LocomotionEnv(task=task_b)
    try:
        trace(used, actions, seed=11)
        used.set_task(task_a)
        assert np.array_equal(trace(fresh, actions, seed=11), trace(used, actions, seed=11))
    finally:
        fresh.close()
        used.close()


# ----------------------------------------------------------------------------- options
def test_success_duration_matches_the_registered_time_limit():
    spec = gym.spec("sim_envs/Locomotion-v0")
    assert spec.max_episode_steps * CONTROL_DT == pytest.approx(EPISODE_SECONDS)
    assert LocomotionEnv.substeps * PHYSICS_DT == pytest.approx(CONTROL_DT) == 0.02


def test_gait_generator_adds_the_phase_after_the_command():
    env = gym.make("sim_envs/Locomotion-v0", gait_generator=True)
    try:
        assert env.observation_space.shape == (50,)
        obs, _ = env.reset(seed=0, options={"command": (0.8, 0.0, 0.1)})
        assert np.allclose(obs[45:48], [0.8, 0.0, 0.1]) and np.allclose(obs[48:], [0, 1])
    finally:
        env.close()


def test_trot_offsets_swing_diagonal_pairs_in_turn_and_lift_the_foot_straight_up():
    quarter = trot_offsets(math.pi / 2).reshape(4, 3)  # FR and RL at mid-swing
    assert np.allclose(quarter[[0, 3]], [0.0, GAIT_LIFT, -2 * GAIT_LIFT])
    assert np.allclose(quarter[[1, 2]], 0.0)  # FL and RR stand
    three_quarters = trot_offsets(3 * math.pi / 2).reshape(4, 3)
    assert np.allclose(three_quarters[[1, 2]], [0.0, GAIT_LIFT, -2 * GAIT_LIFT])
    assert np.allclose(three_quarters[[0, 3]], 0.0)
    assert np.allclose(trot_offsets(0.0), 0.0)


def _walk_with_generator(forward: float, steps: int = 200) -> tuple[float, bool, np.ndarray]:
    """Drive the generator with a thigh offset of ``forward`` rad following each leg's
    cos(phase + offset), read from the observed phase; return (x travelled, fell, obs)."""
    env = gym.make("sim_envs/Walk-v0", gait_generator=True)
    try:
        obs, _ = env.reset(seed=0)
        x0 = float(env.unwrapped._pos[0])
        fell = False
        for _ in range(steps):
            sin_phase, cos_phase = obs[-2:]
            action = np.zeros(12, dtype=np.float32)
            # cos(phase + pi) = -cos(phase): FR and RL in phase, FL and RR opposite
            action[[1, 10]] = forward * cos_phase / ACTION_SCALE[1]
            action[[4, 7]] = -forward * cos_phase / ACTION_SCALE[1]
            obs, _, terminated, truncated, info = env.step(action)
            fell = fell or info["fall"]
            if terminated or truncated:
                break
        return float(env.unwrapped._pos[0]) - x0, fell, obs
    finally:
        env.close()


def test_gait_generator_steps_in_place_and_a_phase_locked_thigh_offset_walks():
    in_place, fell, obs = _walk_with_generator(0.0)
    assert obs.shape == (47,) and not fell  # walk: proprioception and the phase
    assert abs(in_place) < 0.1
    forward, fell_forward, _ = _walk_with_generator(0.3)
    backward, fell_backward, _ = _walk_with_generator(-0.3)
    # 4 s of walking: measured 1.4 m forward and about 1 m backward
    assert forward > 0.8 and backward < -0.6
    assert not fell_forward and not fell_backward


def test_gait_phase_advances_one_stride_per_period_from_zero_at_reset():
    env = gym.make("sim_envs/Walk-v0", gait_generator=True, observe_command=True)
    try:
        assert env.observation_space.shape == (49,)  # command, then the gait phase
        obs, _ = env.reset(seed=0)
        assert np.allclose(obs[-2:], [0.0, 1.0])
        period = round(1.0 / (GAIT_FREQUENCY * CONTROL_DT))  # 25 steps at 2 Hz and 50 Hz
        for step in range(1, period + 1):
            obs, *_ = env.step(np.zeros(12, dtype=np.float32))
            angle = 2 * math.pi * step / period
            assert np.allclose(obs[-2:], [math.sin(angle), math.cos(angle)], atol=1e-5)
        obs, _ = env.reset(seed=1)
        assert np.allclose(obs[-2:], [0.0, 1.0])
    finally:
        env.close()
    with pytest.raises(ValueError, match="gait_generator"):
        LocomotionEnv(gait_generator=1)


# ----------------------------------------------------------------------------- split
def test_split_membership_and_sampling():
    family = LocomotionFamily()
    train = family.sample_tasks(90, "train", seed=0)
    test = family.sample_tasks(90, "test", seed=0)
    assert family.sample_tasks(90, "train", seed=0) == train
    for task in train:
        p = task.params
        assert p.terrain == "flat" or p.difficulty <= HELD_OUT_DIFFICULTY
        assert p.payload <= HELD_OUT_PAYLOAD
        assert p.damaged_leg == "none" or p.leg_strength >= HELD_OUT_LEG_STRENGTH
    for task in test:
        assert len(held_out_factors(task.params)) == 1  # one held-out factor each
    assert not {t.params for t in train} & {t.params for t in test}
    assert {t.params.terrain for t in train} == set(TERRAIN_TYPES)
    assert {t.params.damaged_leg for t in train} == {"none", "FR", "FL", "RR", "RL"}
    assert {held_out_factors(t.params)[0] for t in test} == set(HELD_OUT_FACTORS)
    # No training task has a payload, damage or terrain difficulty of any test task.
    assert max(t.params.payload for t in train) < min(
        t.params.payload for t in test if "payload" in held_out_factors(t.params))

    assert family.split_of(dataclasses.replace(BASE, payload=3.2)) == "test"
    assert family.split_of(dataclasses.replace(BASE, payload=3.0)) == "train"
    assert family.split_of(dataclasses.replace(BASE, damaged_leg="RL",
                                               leg_strength=0.25)) == "test"
    assert family.split_of(dataclasses.replace(BASE, damaged_leg="RL",
                                               leg_strength=0.3)) == "train"
    assert family.split_of(dataclasses.replace(BASE, terrain="stairs", difficulty=0.9)) == "test"
    assert family.split_of(dataclasses.replace(BASE, terrain="stairs", difficulty=0.8)) == "train"
    with pytest.raises(ValueError, match="split"):
        family.make_task(dataclasses.replace(BASE, payload=4.0), split="train")


def test_params_reject_bad_values():
    with pytest.raises(ValueError, match="friction"):
        dataclasses.replace(BASE, friction=2.0)
    with pytest.raises(ValueError, match="terrain_seed"):
        dataclasses.replace(BASE, terrain_seed=1.5)
    with pytest.raises(ValueError, match="terrain"):
        dataclasses.replace(BASE, terrain="ice")
    with pytest.raises(ValueError, match="difficulty"):
        dataclasses.replace(BASE, difficulty=0.5)  # flat
    with pytest.raises(ValueError, match="leg_strength"):
        dataclasses.replace(BASE, leg_strength=0.5)  # no damaged leg
    with pytest.raises(ValueError, match="damaged_leg"):
        dataclasses.replace(BASE, damaged_leg="tail", leg_strength=0.5)
    with pytest.raises(ValueError, match="payload"):
        dataclasses.replace(BASE, payload=6.0)
    assert dataclasses.replace(BASE, terrain_seed=3.0).terrain_seed == 3


