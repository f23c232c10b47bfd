"""Contract tests every registered environment must pass (reach, grasp, locomotion, walk).

Gymnasium and SB3 env checkers, determinism (also across task switches and env
instances), SB3 PPO, rendering, video recording, sync/async vector envs with per-sub-env
tasks, input validation and the task API (JSON, splits, reproducible sampling).
"""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from gymnasium.wrappers import RecordVideo
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import sim_envs
from sim_envs import Task

ENV_IDS = list(sim_envs.ENV_IDS.values())
FAMILY_OF = {gym_id: name for name, gym_id in sim_envs.ENV_IDS.items()}
#: Steps of the determinism episodes (the registered length, capped to keep this fast).
MAX_CHECK_STEPS = 100


def env_name(gym_id: str) -> str:
    return gym_id.split("/")[1].split("-")[0]


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
parametrize_ids = pytest.mark.parametrize("gym_id", ENV_IDS, ids=[env_name(i) for i in ENV_IDS])


def episode_length(gym_id: str) -> int:
    return min(gym.spec(gym_id).max_episode_steps, MAX_CHECK_STEPS)


def actions_for(env: gym.Env, n: int, seed: int) -> np.ndarray:
    space = env.action_space
    return np.random.default_rng(seed).uniform(
        space.low, space.high, (n, *space.shape)).astype(np.float32)


def rollout(env: gym.Env, task: Task, actions: np.ndarray, seed: int = 3):
    """(observations, rewards, infos) of one episode of ``task`` from ``reset(seed)``."""
    env.unwrapped.set_task(task)
    obs, info = env.reset(seed=seed)
    observations, rewards, infos = [obs], [], [info]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs)
        rewards.append(reward)
        infos.append(info)
        if terminated or truncated:
            break
    return np.array(observations), np.array(rewards), infos


# ----------------------------------------------------------------------------- checkers
@parametrize_ids
def test_gymnasium_env_checker(gym_id):
    env = gym.make(gym_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # unbounded Box spaces are intended
        gym_check_env(env.unwrapped, skip_render_check=True)
    env.close()


@parametrize_ids
def test_sb3_env_checker(gym_id):
    env = gym.make(gym_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sb3_check_env(env.unwrapped, warn=True)
    env.close()


# ----------------------------------------------------------------------------- determinism
@parametrize_ids
def test_same_seed_task_and_actions_give_bit_identical_trajectories(gym_id):
    env = gym.make(gym_id)
    task_a, task_b = env.unwrapped.sample_tasks(2, "train", seed=11)
    actions = actions_for(env, episode_length(gym_id), seed=5)
    first = rollout(env, task_a, actions)
    again = rollout(env, task_a, actions)
    rollout(env, task_b, actions[:10])  # switch to another task, then back
    back = rollout(env, task_a, actions)
    for other in (again, back):
        assert np.array_equal(first[0], other[0])
        assert np.array_equal(first[1], other[1])
        assert [i["success"] for i in first[2]] == [i["success"] for i in other[2]]
    # Same trajectory in a fresh env of its own.
    fresh = gym.make(gym_id)
    assert np.array_equal(first[0], rollout(fresh, task_a, actions)[0])
    # A different task or seed changes the trajectory (so the check above is not vacuous).
    assert not np.array_equal(first[1], rollout(env, task_b, actions)[1])
    assert not np.array_equal(first[0], rollout(env, task_a, actions, seed=4)[0])
    # success / is_success are reported at every step and agree.
    for info in first[2]:
        assert info["success"] is info["is_success"]
        assert isinstance(info["success"], bool)
    env.close()
    fresh.close()


@parametrize_ids
def test_two_envs_in_one_process_do_not_interfere(gym_id):
    env_1, env_2 = gym.make(gym_id), gym.make(gym_id)
    task_1, task_2 = env_1.unwrapped.sample_tasks(2, "train", seed=2)
    actions = actions_for(env_1, 40, seed=1)
    alone = rollout(env_1, task_1, actions)
    env_1.unwrapped.set_task(task_1)
    env_2.unwrapped.set_task(task_2)
    obs_1, _ = env_1.reset(seed=3)
    env_2.reset(seed=9)
    interleaved, rewards = [obs_1], []
    for action in actions:
        env_2.step(-action)  # the other env steps in between, with other actions
        obs, reward, terminated, truncated, _ = env_1.step(action)
        interleaved.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            break
    assert np.array_equal(alone[0], np.array(interleaved))
    assert np.array_equal(alone[1], np.array(rewards))
    env_1.close()
    env_2.close()


# ----------------------------------------------------------------------------- SB3 PPO
@parametrize_ids
def test_sb3_ppo_learns_a_few_hundred_steps_with_finite_values(gym_id):
    env = gym.make(gym_id, max_episode_steps=32)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0,
                device="cpu", policy_kwargs={"net_arch": [32, 32]})
    model.learn(total_timesteps=192)
    assert model.num_timesteps >= 192
    for parameter in model.policy.parameters():
        assert np.all(np.isfinite(parameter.detach().numpy()))
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == env.action_space.shape and np.all(np.isfinite(action))
    rewards = model.rollout_buffer.rewards
    assert np.all(np.isfinite(rewards)) and np.any(rewards != 0.0)
    env.close()


# ----------------------------------------------------------------------------- rendering
@parametrize_ids
def test_render_rgb_array_returns_a_non_constant_uint8_image(gym_id):
    env = gym.make(gym_id, render_mode="rgb_array")
    env.reset(seed=0)
    image = env.render()
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    assert image.shape[0] >= 100 and image.shape[1] >= 100
    assert image.std() > 5.0
    env.close()
    plain = gym.make(gym_id).unwrapped
    plain.reset(seed=0)
    assert plain.render() is None  # no render_mode: no image
    plain.close()


@parametrize_ids
def test_record_video_writes_a_video_file(gym_id, tmp_path):
    env = gym.make(gym_id, render_mode="rgb_array", max_episode_steps=6)
    folder = tmp_path / "videos"
    env = RecordVideo(env, video_folder=str(folder), episode_trigger=lambda _: True,
                      disable_logger=True)
    env.reset(seed=0)
    for action in actions_for(env, 6, seed=0):
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break
    env.close()
    videos = list(folder.glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000


# ----------------------------------------------------------------------------- vector envs
@parametrize_ids
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_vector_env_tasks_per_sub_env_survive_autoreset(gym_id, mode):
    envs = gym.make_vec(gym_id, num_envs=2, vectorization_mode=mode, max_episode_steps=4)
    tasks = sim_envs.make_family(FAMILY_OF[gym_id]).sample_tasks(2, "train", seed=21)
    envs.set_attr("task", tasks)
    assert list(envs.get_attr("task")) == tasks
    _, info = envs.reset(seed=0)
    assert list(info["task_id"]) == [t.task_id for t in tasks]
    ended = np.zeros(2, bool)
    seen_after_reset = np.zeros(2, bool)
    rng = np.random.default_rng(0)
    for _ in range(10):  # two episodes of 4 steps each, plus the autoreset steps
        actions = rng.uniform(-1, 1, envs.action_space.shape).astype(np.float32)
        obs, rewards, terminated, truncated, info = envs.step(actions)
        assert obs.shape == envs.observation_space.shape and np.all(np.isfinite(rewards))
        assert "success" in info and "is_success" in info
        if "task_id" in info:  # always in reset infos (autoreset steps), maybe in steps
            for k in np.flatnonzero(info["_task_id"]):
                assert info["task_id"][k] == tasks[k].task_id
                seen_after_reset[k] |= ended[k]
        ended |= terminated | truncated
    assert ended.all() and seen_after_reset.all()
    assert list(envs.get_attr("task")) == tasks
    envs.close()


# ----------------------------------------------------------------------------- bad input
def test_unknown_family_is_rejected():
    with pytest.raises(ValueError, match="unknown task family 'nope'"):
        sim_envs.make_family("nope")
    with pytest.raises(ValueError, match="unknown task family"):
        sim_envs.env_id("nope")


@parametrize_ids
def test_bad_task_parameters_are_rejected(gym_id):
    family = sim_envs.make_family(FAMILY_OF[gym_id])
    params = family.sample_tasks(1, "train", seed=0)[0].params.to_dict()
    with pytest.raises(ValueError, match="unknown parameter"):
        family.make_task({**params, "bogus": 1.0})
    missing = dict(params)
    missing.pop(next(iter(missing)))
    with pytest.raises(ValueError, match="missing parameter"):
        family.make_task(missing)
    specs = family.params_type.specs()
    numeric = [n for n, s in specs.items() if s.choices is None and math.isfinite(s.high)]
    assert numeric
    for name in numeric:
        high = specs[name].high
        with pytest.raises(ValueError, match=f"{name}.*out of range"):
            family.make_task({**params, name: high + abs(high) + 1.0})
        with pytest.raises(ValueError, match="finite"):
            family.make_task({**params, name: float("nan")})
    for name, spec in specs.items():
        if spec.choices is not None:
            with pytest.raises(ValueError, match="is not one of"):
                family.make_task({**params, name: "no-such-choice"})


@parametrize_ids
def test_bad_actions_raise_and_out_of_bounds_actions_are_clipped(gym_id):
    env = gym.make(gym_id).unwrapped
    env.reset(seed=0)
    shape = env.action_space.shape
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(shape[0] + 1, np.float32))
    bad = np.zeros(shape, np.float32)
    bad[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        env.step(bad)
    with pytest.raises(ValueError, match="task"):
        env.set_task("not a task")
    other = next(n for n in sim_envs.FAMILY_NAMES if n != FAMILY_OF[gym_id])
    with pytest.raises(ValueError, match="family"):
        env.set_task(sim_envs.make_family(other).sample_tasks(1, "train", 0)[0])
    big = np.random.default_rng(0).uniform(-5.0, 5.0, (5, *shape)).astype(np.float32)
    big[:, 0] = 4.0  # surely out of bounds
    clipped = np.clip(big, env.action_space.low, env.action_space.high)
    results = []
    for actions in (big, clipped):
        obs, _ = env.reset(seed=1)
        trajectory = [obs]
        for action in actions:
            trajectory.append(env.step(action)[0])
        results.append(np.array(trajectory))
    assert np.array_equal(results[0], results[1])
    env.close()


# ----------------------------------------------------------------------------- task API
@parametrize_ids
def test_task_json_round_trip(gym_id):
    family = sim_envs.make_family(FAMILY_OF[gym_id])
    for split in ("train", "test"):
        for task in family.sample_tasks(5, split, seed=1):
            again = Task.from_json(task.to_json())
            assert again == task and again.task_id == task.task_id
            assert hash(again) == hash(task)
    task = family.sample_tasks(1, "train", seed=1)[0]
    with pytest.raises(ValueError, match="task_id"):
        Task.from_dict({**task.to_dict(), "task_id": "reach-train-000000000000"})
    with pytest.raises(ValueError, match="split"):
        Task.from_dict({**task.to_dict(), "split": "test", "task_id": ""})


@parametrize_ids
def test_splits_are_disjoint_and_classified(gym_id):
    family = sim_envs.make_family(FAMILY_OF[gym_id])
    assert family.split_doc
    train = family.sample_tasks(200, "train", seed=0)
    test = family.sample_tasks(200, "test", seed=0)
    assert all(family.split_of(t.params) == "train" and t.split == "train" for t in train)
    assert all(family.split_of(t.params) == "test" and t.split == "test" for t in test)
    assert not {t.params for t in train} & {t.params for t in test}
    # Asking for the wrong split of a parameter set is refused.
    with pytest.raises(ValueError, match="belongs to the 'train' split"):
        family.make_task(train[0].params, split="test")


@parametrize_ids
def test_task_sampling_is_reproducible(gym_id):
    family = sim_envs.make_family(FAMILY_OF[gym_id])
    assert family.sample_tasks(8, "train", seed=3) == family.sample_tasks(8, "train", seed=3)
    assert family.sample_tasks(8, "train", seed=3) != family.sample_tasks(8, "train", seed=4)
    assert family.sample_tasks(8, "test", seed=3) != family.sample_tasks(8, "train", seed=3)
    ids = [t.task_id for t in family.sample_tasks(50, "train", seed=3)]
    assert len(set(ids)) == 50


@parametrize_ids
def test_task_features_are_bounded_and_tell_tasks_apart(gym_id):
    family = sim_envs.make_family(FAMILY_OF[gym_id])
    tasks = family.sample_tasks(50, "train", seed=2)
    features = np.stack([t.params.features() for t in tasks])
    assert features.shape == (50, family.params_type.feature_size())
    assert features.dtype == np.float32 and np.abs(features).max() <= 1.0 + 1e-6
    assert len({f.tobytes() for f in features}) == 50  # every task has its own features


def test_task_features_leave_out_the_terrain_seed():
    family = sim_envs.make_family("locomotion")
    task = family.sample_tasks(1, "train", seed=0)[0]
    reseeded = family.make_task({**task.params.to_dict(), "terrain_seed": 12345})
    assert reseeded.params != task.params
    np.testing.assert_array_equal(reseeded.params.features(), task.params.features())
    # An angle (unit "rad", e.g. walk's heading) is its cosine and sine: -pi and pi are
    # the same direction.
    angle = sim_envs.ParamSpec(unit="rad", low=-math.pi, high=math.pi)
    np.testing.assert_allclose(angle.encode(-math.pi), angle.encode(math.pi), atol=1e-6)
