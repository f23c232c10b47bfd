"""Locomotion family: terrain generation, in-place heightfield, task knobs, reward, split."""

from __future__ import annotations

import dataclasses
import math

import gymnasium as gym
import numpy as np
import pybullet
import pytest
from envtools import trace

import sim_envs  # noqa: F401  (registers the gymnasium ids)
from sim_envs.locomotion import (
    CONTROL_DT,
    EPISODE_SECONDS,
    FALL_PENALTY,
    GAIT_FREQUENCY,
    GAIT_LIFT,
    PHYSICS_DT,
    SPAWN_POSITION,
    SUCCESS_FRACTION,
    TRACKING_SIGMA,
    LocomotionEnv,
    LocomotionFamily,
    LocomotionParams,
    heading_held_out,
    trot_offsets,
)
from sim_envs.robots.a1 import ACTION_SCALE, STANDING_POSE, TRUNK_MASS
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
                        payload=0.0, motor_strength=1.0, heading=0.0, speed=0.5)


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


def test_friction_payload_and_motor_strength_are_applied(env):
    task = make_task(env.family, friction=0.42, payload=2.5, motor_strength=0.8)
    env.set_task(task)
    env.reset(seed=0)
    c = env.client
    assert c.getDynamicsInfo(env.terrain.body_id, -1)[1] == pytest.approx(0.42)
    assert c.getDynamicsInfo(env.robot.body_id, -1)[0] == pytest.approx(TRUNK_MASS + 2.5)
    limits = 0.8 * env.robot.effort_limits
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


# ----------------------------------------------------------------------------- dynamics
def test_reset_observation_layout(env):
    env.set_task(make_task(env.family))
    obs, info = env.reset(seed=3)
    assert obs.shape == (45,) and obs.dtype == np.float32
    assert np.allclose(obs[0:3], [0.0, 0.0, -1.0], atol=1e-6)  # gravity in base frame
    assert np.allclose(obs[3:9], 0.0)  # at rest
    assert np.all(np.abs(obs[9:21]) <= 0.05 + 1e-6) and np.any(obs[9:21] != 0.0)
    assert np.all(obs[33:45] == 0.0)  # no previous action
    assert info["success"] is False


def test_falling_terminates_with_penalty(env):
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
    assert reward <= 1.0 - FALL_PENALTY

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


def _reward_with_base_velocity(env, velocity):
    env.reset(seed=0)
    # In the air, so no contact slows the base down within the step.
    env.client.resetBasePositionAndOrientation(env.robot.body_id, [0, 0, 1.5], [0, 0, 0, 1])
    env.client.resetBaseVelocity(env.robot.body_id, list(velocity), [0, 0, 0])
    _, reward, terminated, _, info = env.step(np.zeros(12, dtype=np.float32))
    assert not terminated
    return reward, info


def test_reward_prefers_commanded_velocity_over_standing(env):
    heading, speed = 2.0, 0.7
    env.set_task(make_task(env.family, heading=heading, speed=speed))
    command = (speed * math.cos(heading), speed * math.sin(heading), 0.0)
    moving, moving_info = _reward_with_base_velocity(env, command)
    still, still_info = _reward_with_base_velocity(env, (0.0, 0.0, 0.0))
    wrong, _ = _reward_with_base_velocity(env, (-command[0], -command[1], 0.0))
    assert moving > still > wrong
    assert moving_info["tracking_reward"] > 0.95
    assert still_info["tracking_reward"] == pytest.approx(
        math.exp(-(speed**2) / TRACKING_SIGMA), abs=0.02)


def test_success_latches_at_half_the_commanded_distance(env):
    heading, speed = -2.5, 0.6
    env.set_task(make_task(env.family, heading=heading, speed=speed))
    needed = SUCCESS_FRACTION * speed * EPISODE_SECONDS
    for distance, expected in [(needed - 0.1, False), (needed + 0.1, True)]:
        env.reset(seed=0)
        position = [SPAWN_POSITION[0] + distance * math.cos(heading),
                    SPAWN_POSITION[1] + distance * math.sin(heading), SPAWN_POSITION[2]]
        env.client.resetBasePositionAndOrientation(env.robot.body_id, position, [0, 0, 0, 1])
        _, _, terminated, _, info = env.step(np.zeros(12, dtype=np.float32))
        assert not terminated
        assert info["success"] is expected
        if expected:  # latched: walking back does not revoke it
            env.client.resetBasePositionAndOrientation(
                env.robot.body_id, list(SPAWN_POSITION), [0, 0, 0, 1])
            _, _, _, _, info = env.step(np.zeros(12, dtype=np.float32))
            assert info["success"] and info["progress"] < needed


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


def test_observe_command_option_changes_the_observation():
    hidden = gym.make("sim_envs/Locomotion-v0")
    shown = gym.make("sim_envs/Locomotion-v0", observe_command=True)
    try:
        assert hidden.observation_space.shape == (45,)
        assert shown.observation_space.shape == (47,)
        task = make_task(shown.unwrapped.family, heading=1.0, speed=0.8)
        shown.unwrapped.set_task(task)
        obs, _ = shown.reset(seed=0)
        assert shown.observation_space.contains(obs)
        # Yaw is 0 at reset, so the command in the base frame is the world command.
        assert np.allclose(obs[45:], [0.8 * math.cos(1.0), 0.8 * math.sin(1.0)], atol=1e-5)
    finally:
        hidden.close()
        shown.close()
    with pytest.raises(ValueError, match="observe_command"):
        LocomotionEnv(observe_command="yes")


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
    env = gym.make("sim_envs/Locomotion-v0", gait_generator=True)
    try:
        env.unwrapped.set_task(make_task(env.unwrapped.family))
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
    assert obs.shape == (47,) and not fell
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
    train = family.sample_tasks(60, "train", seed=0)
    test = family.sample_tasks(60, "test", seed=0)
    assert family.sample_tasks(60, "train", seed=0) == train
    for task in train:
        p = task.params
        assert not heading_held_out(p.heading)
        assert p.terrain == "flat" or p.difficulty <= 0.8
    for task in test:
        p = task.params
        assert heading_held_out(p.heading) or (p.terrain != "flat" and p.difficulty > 0.8)
    assert not {t.params for t in train} & {t.params for t in test}
    assert {t.params.terrain for t in train} == set(TERRAIN_TYPES)
    # Both reasons for being a test task occur.
    assert any(heading_held_out(t.params.heading) for t in test)
    assert any(not heading_held_out(t.params.heading) for t in test)

    assert family.split_of(dataclasses.replace(BASE, heading=math.pi / 4)) == "test"
    assert family.split_of(dataclasses.replace(BASE, heading=-3 * math.pi / 4 + 0.1)) == "test"
    assert family.split_of(dataclasses.replace(BASE, heading=math.pi / 4 + 0.3)) == "train"
    assert family.split_of(dataclasses.replace(BASE, terrain="stairs", difficulty=0.9)) == "test"
    assert family.split_of(dataclasses.replace(BASE, terrain="stairs", difficulty=0.8)) == "train"
    assert family.split_of(dataclasses.replace(BASE, terrain="flat", difficulty=0.9)) == "train"
    with pytest.raises(ValueError, match="split"):
        family.make_task(dataclasses.replace(BASE, heading=math.pi / 4), split="train")


def test_params_reject_bad_values():
    with pytest.raises(ValueError, match="friction"):
        dataclasses.replace(BASE, friction=2.0)
    with pytest.raises(ValueError, match="terrain_seed"):
        dataclasses.replace(BASE, terrain_seed=1.5)
    with pytest.raises(ValueError, match="terrain"):
        dataclasses.replace(BASE, terrain="ice")
    assert dataclasses.replace(BASE, terrain_seed=3.0).terrain_seed == 3
