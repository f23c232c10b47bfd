"""Reach family: hidden target, reward, reachability, control, split."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from sim_envs.reach import (
    ACTION_COST,
    AZIMUTH_MAX,
    FINGER_WIDTH,
    MAX_EE_STEP,
    SUCCESS_DISTANCE,
    TEST_SECTOR,
    WORKSPACE_LOW,
    ReachEnv,
    ReachFamily,
    ReachParams,
)

EE = slice(14, 17)  # EE position in the observation


@pytest.fixture(scope="module")
def env():
    env = ReachEnv()
    yield env
    env.close()


def task_at(azimuth: float, radius: float, height: float):
    return ReachFamily().make_task(ReachParams(azimuth=azimuth, radius=radius, height=height))


def go_to_target(env: ReachEnv, task, steps: int = 50):
    """A scripted controller that knows the target: proportional EE motion towards it."""
    env.set_task(task)
    obs, _ = env.reset(seed=0)
    target = task.params.position
    infos = []
    for _ in range(steps):
        action = np.clip((target - obs[EE]) / MAX_EE_STEP * 1.5, -1.0, 1.0)
        obs, _, _, _, info = env.step(action)
        infos.append(info)
    return obs, infos


def test_target_position_from_cylindrical_parameters():
    params = ReachParams(azimuth=math.pi / 6, radius=0.5, height=0.2)
    assert np.allclose(params.position, [0.5 * math.cos(math.pi / 6), 0.25, 0.2])


def test_reward_is_negative_distance_minus_action_cost(env):
    task = task_at(0.3, 0.55, 0.25)
    env.set_task(task)
    env.reset(seed=0)
    for action in np.random.default_rng(0).uniform(-1, 1, (10, 3)):
        obs, reward, terminated, truncated, info = env.step(action)
        distance = np.linalg.norm(obs[EE].astype(np.float64) - task.params.position)
        assert info["distance"] == pytest.approx(distance, abs=1e-6)
        assert reward == pytest.approx(-info["distance"] - ACTION_COST * action @ action)
        assert not terminated and not truncated


def test_reward_decreases_with_distance_to_the_target(env):
    # The EE starts at about (0.45, 0, 0.30): targets further away give lower rewards.
    rewards = []
    for radius in (0.45, 0.55, 0.65):
        env.set_task(task_at(0.0, radius, 0.30))
        env.reset(seed=0)
        rewards.append(env.step(np.zeros(3))[1])
    assert rewards[0] > rewards[1] > rewards[2]
    # Moving towards the target raises the reward step after step.
    _, infos = go_to_target(env, task_at(-0.8, 0.6, 0.15), steps=8)
    distances = [i["distance"] for i in infos]
    assert all(a > b for a, b in zip(distances, distances[1:]))


def test_the_target_is_hidden_from_the_observation(env):
    actions = np.random.default_rng(1).uniform(-1, 1, (20, 3))
    runs = []
    for task in (task_at(-0.9, 0.35, 0.10), task_at(0.9, 0.65, 0.50)):
        env.set_task(task)
        obs, _ = env.reset(seed=4)
        observations, rewards = [obs], []
        for action in actions:
            obs, reward, *_ = env.step(action)
            observations.append(obs)
            rewards.append(reward)
        runs.append((np.array(observations), np.array(rewards)))
    assert np.array_equal(runs[0][0], runs[1][0])  # same observations...
    assert not np.allclose(runs[0][1], runs[1][1])  # ...only the reward tells the target
    assert all(spec.hidden for spec in ReachParams.specs().values())


CORNERS = [task_at(a, r, h) for a, r, h in itertools.product(
    (-AZIMUTH_MAX, 0.0, AZIMUTH_MAX), (0.30, 0.65), (0.10, 0.50))]


@pytest.mark.parametrize("split", ["train", "test", "corners"])
def test_a_controller_moving_towards_the_target_succeeds(env, split):
    tasks = CORNERS if split == "corners" else ReachFamily().sample_tasks(8, split, seed=5)
    for task in tasks:
        obs, infos = go_to_target(env, task)
        assert infos[-1]["success"] and infos[-1]["is_success"]
        assert infos[-1]["distance"] < SUCCESS_DISTANCE
        first = next(k for k, i in enumerate(infos) if i["success"])
        assert first < 25, (task.params, first)  # half the episode is plenty
        assert infos[first]["distance"] < SUCCESS_DISTANCE
        assert all(i["distance"] >= SUCCESS_DISTANCE for i in infos[:first])


def test_unit_action_moves_the_ee_by_at_most_the_max_step(env):
    env.set_task(task_at(0.0, 0.5, 0.3))
    obs, _ = env.reset(seed=0)
    steps = []
    for _ in range(5):
        before = obs[EE].copy()
        obs, *_ = env.step(np.array([1.0, 0.0, 0.0]))
        steps.append(obs[EE] - before)
    steps = np.array(steps)
    assert np.all(steps[:, 0] <= MAX_EE_STEP + 1e-3)
    assert np.all(steps[1:, 0] >= 0.5 * MAX_EE_STEP)  # tracking is not too sluggish
    assert np.all(np.abs(steps[:, 1:]) < 0.2 * MAX_EE_STEP)  # and goes where asked


def test_gripper_points_down_fingers_stay_fixed_and_workspace_is_enforced(env):
    env.set_task(task_at(0.0, 0.5, 0.3))
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(2)
    for action in rng.uniform(-1, 1, (30, 3)):
        obs, *_ = env.step(action)
        assert obs[20] == pytest.approx(FINGER_WIDTH, abs=2e-3)
        x, y, z, w = env.robot.ee_orn
        assert abs(x) > math.cos(math.radians(10.0) / 2)  # within 10 deg of pointing down
    for _ in range(15):  # push down into the table: the workspace floor stops the EE
        obs, *_ = env.step(np.array([0.0, 0.0, -1.0]))
    assert obs[16] == pytest.approx(WORKSPACE_LOW[2], abs=0.01)


def test_split_membership_is_by_azimuth_sector():
    family = ReachFamily()
    low, high = TEST_SECTOR
    for azimuth, split in [(low, "test"), (high, "test"), (-low, "test"), (-high, "test"),
                           (0.5 * (low + high), "test"), (low - 1e-6, "train"),
                           (high + 1e-6, "train"), (0.0, "train"), (AZIMUTH_MAX, "train"),
                           (-AZIMUTH_MAX, "train")]:
        params = ReachParams(azimuth=azimuth, radius=0.5, height=0.3)
        assert family.split_of(params) == split, azimuth
    train = np.array([t.params.azimuth for t in family.sample_tasks(400, "train", seed=0)])
    test = np.array([t.params.azimuth for t in family.sample_tasks(400, "test", seed=0)])
    assert np.all((np.abs(train) < low) | (np.abs(train) > high))
    assert np.all((np.abs(test) >= low) & (np.abs(test) <= high))
    # Both splits cover their whole region: both signs, inner and outer train sectors.
    assert (test > 0).any() and (test < 0).any()
    assert (np.abs(train) < low).any() and (train > high).any() and (train < -high).any()
    radii = [t.params.radius for t in family.sample_tasks(200, "test", seed=1)]
    assert min(radii) < 0.35 and max(radii) > 0.60


def test_reach_params_are_validated():
    with pytest.raises(ValueError, match="azimuth.*out of range"):
        ReachParams(azimuth=AZIMUTH_MAX + 0.1, radius=0.5, height=0.3)
    with pytest.raises(ValueError, match="radius.*out of range"):
        ReachParams(azimuth=0.0, radius=0.9, height=0.3)
    with pytest.raises(ValueError, match="height.*must be a number"):
        ReachParams(azimuth=0.0, radius=0.5, height="high")
    with pytest.raises(ValueError, match="ReachParams"):
        ReachFamily().split_of(object())
