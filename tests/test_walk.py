"""Walk family: the A1 on flat ground, walking along a hidden direction (AntDir-style)."""

from __future__ import annotations

import dataclasses
import math

import gymnasium as gym
import numpy as np
import pytest

import sim_envs  # noqa: F401  (registers the gymnasium ids)
from sim_envs import Task
from sim_envs.locomotion import LocomotionFamily, LocomotionParams
from sim_envs.robots.a1 import TRUNK_MASS
from sim_envs.walk import (
    CONTROL_COST,
    HEADINGS,
    HELD_OUT_PAYLOAD,
    SUCCESS_DISTANCE,
    WalkEnv,
    WalkFamily,
    WalkParams,
)

BASE = WalkParams(heading=0.0, friction=1.0, payload=1.0, motor_strength=1.0)


def test_split_by_payload_with_both_headings_in_both_splits():
    family = WalkFamily()
    train = family.sample_tasks(40, "train", seed=0)
    test = family.sample_tasks(40, "test", seed=0)
    assert family.sample_tasks(40, "test", seed=0) == test
    assert all(t.params.payload <= HELD_OUT_PAYLOAD for t in train)
    assert all(t.params.payload > HELD_OUT_PAYLOAD for t in test)
    for tasks in (train, test):
        assert {t.params.heading for t in tasks} == set(HEADINGS)
        assert all(t.family == "walk" for t in tasks)
    assert family.split_of(dataclasses.replace(BASE, payload=HELD_OUT_PAYLOAD)) == "train"
    assert family.split_of(dataclasses.replace(BASE, payload=2.3, heading=math.pi)) == "test"


def test_a_balanced_batch_has_each_heading_in_equal_share():
    family = WalkFamily()
    unbalanced = 0
    for seed in range(20):
        tasks = family.sample_balanced(10, "train", seed, by="heading")
        assert tasks == family.sample_balanced(10, "train", seed, by="heading")
        assert [t.params.heading for t in tasks].count(0.0) == 5
        assert all(family.split_of(t.params) == "train" for t in tasks)
        assert len({t.task_id for t in tasks}) == 10
        plain = family.sample_tasks(10, "train", seed=seed)
        unbalanced += [t.params.heading for t in plain].count(0.0) != 5
    assert unbalanced >= 5  # a plain draw of 10 is 5 / 5 only a quarter of the time
    odd = family.sample_balanced(7, "test", 3, by="heading")
    assert [t.params.heading for t in odd].count(0.0) == 4  # the first value gets the extra
    assert all(family.split_of(t.params) == "test" for t in odd)


def test_balancing_needs_a_parameter_with_few_values():
    family = WalkFamily()
    with pytest.raises(ValueError, match="no task parameter 'direction'"):
        family.sample_balanced(10, "train", 0, by="direction")
    with pytest.raises(ValueError, match="too many to balance"):
        family.sample_balanced(10, "train", 0, by="payload")


def test_parameters_outside_the_walk_space_are_rejected():
    with pytest.raises(ValueError, match="heading"):
        dataclasses.replace(BASE, heading=1.0)
    with pytest.raises(ValueError, match="heading"):
        Task.from_dict({"family": "walk", "split": "train",
                        "params": {**BASE.to_dict(), "heading": 1.0}})
    with pytest.raises(ValueError, match="payload"):
        dataclasses.replace(BASE, payload=3.5)


def test_a_locomotion_task_is_refused_by_the_walk_env():
    locomotion_task = LocomotionFamily().sample_tasks(1, "train", seed=0)[0]
    assert isinstance(locomotion_task.params, LocomotionParams)
    env = WalkEnv()
    try:
        with pytest.raises(ValueError, match="walk"):
            env.set_task(locomotion_task)
    finally:
        env.close()


def _reward_with_base_velocity(env, vx):
    env.reset(seed=0)
    env.client.resetBasePositionAndOrientation(env.robot.body_id, [0, 0, 1.5], [0, 0, 0, 1])
    env.client.resetBaseVelocity(env.robot.body_id, [vx, 0.0, 0.0], [0, 0, 0])
    _, reward, terminated, _, info = env.step(np.zeros(12, dtype=np.float32))
    assert not terminated
    return reward, info


def test_reward_is_the_velocity_along_the_hidden_direction():
    env = WalkEnv()
    try:
        for heading, sign in ((0.0, 1.0), (math.pi, -1.0)):
            env.set_task(WalkFamily().make_task(dataclasses.replace(BASE, heading=heading)))
            assert env.observation_space.shape == (45,)  # the direction is hidden
            right, info = _reward_with_base_velocity(env, 0.5 * sign)
            still, _ = _reward_with_base_velocity(env, 0.0)
            wrong, _ = _reward_with_base_velocity(env, -0.5 * sign)
            assert right == pytest.approx(info["velocity"], abs=1e-9)
            assert 0.4 < right < 0.6 and abs(still) < 0.05 and -0.6 < wrong < -0.4
        # The control cost is CONTROL_COST per unit of squared action.
        env.reset(seed=0)
        *_, info = env.step(np.ones(12, dtype=np.float32))
        env.reset(seed=0)
        _, reward, *_ = env.step(np.ones(12, dtype=np.float32))
        assert reward == pytest.approx(info["velocity"] - 12 * CONTROL_COST)
    finally:
        env.close()


def test_standing_still_earns_about_zero_and_never_succeeds():
    env = gym.make("sim_envs/Walk-v0")
    try:
        for heading in HEADINGS:
            env.unwrapped.set_task(WalkFamily().make_task(dataclasses.replace(BASE,
                                                                              heading=heading)))
            env.reset(seed=0)
            total, done = 0.0, False
            while not done:
                _, reward, terminated, truncated, info = env.step(np.zeros(12, np.float32))
                total += reward
                done = terminated or truncated
            assert abs(total) < 2.0 and not info["success"] and not info["fall"]
    finally:
        env.close()


def test_success_after_one_metre_along_the_direction():
    env = WalkEnv(task=WalkFamily().make_task(dataclasses.replace(BASE, heading=math.pi)))
    try:
        for distance, expected in ((SUCCESS_DISTANCE - 0.1, False), (SUCCESS_DISTANCE + 0.1,
                                                                     True)):
            env.reset(seed=0)
            env.client.resetBasePositionAndOrientation(env.robot.body_id,
                                                       [-distance, 0.0, 0.28], [0, 0, 0, 1])
            *_, info = env.step(np.zeros(12, dtype=np.float32))
            assert info["success"] is expected
    finally:
        env.close()


def test_payload_and_friction_are_applied():
    env = WalkEnv(task=WalkFamily().make_task(dataclasses.replace(BASE, payload=2.0,
                                                                  friction=0.6)))
    try:
        assert env.client.getDynamicsInfo(env.robot.body_id, -1)[0] == pytest.approx(
            TRUNK_MASS + 2.0)
        assert env.client.getDynamicsInfo(env.terrain.body_id, -1)[1] == pytest.approx(0.6)
    finally:
        env.close()


def test_observe_command_shows_the_direction():
    env = WalkEnv(task=WalkFamily().make_task(dataclasses.replace(BASE, heading=math.pi)),
                  observe_command=True)
    try:
        obs, _ = env.reset(seed=0)
        assert obs.shape == (47,) and np.allclose(obs[45:], [-0.5, 0.0], atol=1e-6)
    finally:
        env.close()
    with pytest.raises(ValueError, match="observe_command"):
        WalkEnv(observe_command="yes")
    with pytest.raises(ValueError, match="command_frame"):
        WalkEnv(observe_command=True, command_frame="body")


@pytest.mark.parametrize("frame, size", [("base", 2), ("world", 1)])
def test_a_world_frame_command_is_the_x_velocity_and_does_not_turn_with_the_robot(frame, size):
    env = WalkEnv(task=WalkFamily().make_task(dataclasses.replace(BASE, heading=math.pi)),
                  observe_command=True, command_frame=frame)
    try:
        obs, _ = env.reset(seed=0)
        assert obs.shape == env.observation_space.shape == (45 + size,)
        assert obs[45] == pytest.approx(-0.5, abs=1e-6)  # facing +x: -0.5 m/s either way
        # Turn the robot around: a base-frame command now points ahead, a world one not.
        env.client.resetBasePositionAndOrientation(env.robot.body_id, list(env._pos),
                                                   [0.0, 0.0, 1.0, 0.0])
        env._read_state()
        assert env._observe()[45] == pytest.approx(0.5 if frame == "base" else -0.5, abs=1e-6)
    finally:
        env.close()


def test_observe_yaw_shows_the_heading_of_the_base():
    env = WalkEnv(task=WalkFamily().make_task(BASE), observe_command=True, observe_yaw=True)
    try:
        obs, _ = env.reset(seed=0)
        assert obs.shape == env.observation_space.shape == (49,)
        assert np.allclose(obs[47:], [math.cos(env.yaw), math.sin(env.yaw)], atol=1e-6)
        assert obs[47] == pytest.approx(1.0, abs=1e-3)  # it starts facing +x
        env.client.resetBasePositionAndOrientation(
            env.robot.body_id, list(env._pos), [0.0, 0.0, math.sin(0.5), math.cos(0.5)])
        env._read_state()  # turned by 1 rad about z
        assert np.allclose(env._observe()[47:], [math.cos(1.0), math.sin(1.0)], atol=1e-6)
    finally:
        env.close()
    with pytest.raises(ValueError, match="observe_yaw"):
        WalkEnv(observe_yaw=1)


def test_the_yaw_is_last_also_with_the_gait_phase():
    """``policy.rotate_context`` reads the yaw from the observation's last two values:
    the gait phase, which the gait generator also appends, goes before it."""
    env = WalkEnv(task=WalkFamily().make_task(BASE), gait_generator=True, observe_yaw=True)
    try:
        obs, _ = env.reset(seed=0)
        assert obs.shape == (49,)  # 45 proprioception, 2 gait phase, 2 yaw
        for _ in range(5):
            obs, *_ = env.step(env.action_space.sample())
        assert np.allclose(obs[-2:], [math.cos(env.yaw), math.sin(env.yaw)], atol=1e-6)
        assert np.allclose(obs[-4:-2], [math.sin(env._phase), math.cos(env._phase)],
                           atol=1e-6)
    finally:
        env.close()
