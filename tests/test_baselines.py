"""The SB3 baseline machinery of bench/baselines.py on Reach: task stream, budgets, caps."""

from __future__ import annotations

import numpy as np
import pytest

from bench import baselines
from sim_envs.registry import make_family

TINY_PPO = {"n_steps": 100, "batch_size": 50, "n_epochs": 1}


def test_multitask_wrapper_sets_a_new_training_task_at_every_reset():
    family = make_family("reach")
    env = baselines.MultiTaskWrapper(baselines.make_env("reach"), seed=3)
    try:
        ids = []
        for i in range(12):
            env.reset(seed=i)
            task = env.unwrapped.get_task()
            assert task == env.task  # the env really simulates the drawn task
            assert task.split == "train" and family.split_of(task.params) == "train"
            ids.append(task.task_id)
            env.step(env.action_space.sample())
        assert len(set(ids)) == 12 and env.tasks_set == 12
    finally:
        env.close()
    again = baselines.MultiTaskWrapper(baselines.make_env("reach"), seed=3)
    try:  # seeded: the same stream of tasks
        assert [again.reset()[0] is not None and again.task.task_id for _ in range(12)] == ids
    finally:
        again.close()


def test_multitask_wrapper_pool_only_draws_from_the_pool():
    env = baselines.MultiTaskWrapper(baselines.make_env("reach"), seed=0, pool_size=3)
    try:
        ids = set()
        for _ in range(20):
            env.reset()
            ids.add(env.task.task_id)
        assert ids == {t.task_id for t in env._pool} and len(ids) == 3
    finally:
        env.close()


@pytest.fixture(scope="module")
def tiny_multitask():
    # 2 rollouts of 100 steps; continued from a saved copy to 300 steps.
    return baselines.train_multitask_ppo("reach", 200, seed=0, ppo_kwargs=TINY_PPO)


def test_multitask_training_runs_the_requested_steps_and_continues(tiny_multitask, tmp_path):
    assert tiny_multitask.model.num_timesteps == 200
    tiny_multitask.save(tmp_path / "mt")
    more = baselines.train_multitask_ppo("reach", 300, seed=1, init=tmp_path / "mt",
                                         ppo_kwargs=TINY_PPO)
    assert more.model.num_timesteps == 300


def test_multitask_initial_action_noise_is_sb3s_unless_given(tiny_multitask):
    # Two tiny rollouts move the log-std by far less than the gap between the two starts.
    matched = baselines.train_multitask_ppo("reach", 200, seed=0, ppo_kwargs=TINY_PPO,
                                            log_std_init=-1.0)
    default_std = tiny_multitask.model.policy.log_std.detach().numpy()
    matched_std = matched.model.policy.log_std.detach().numpy()
    assert np.allclose(default_std, 0.0, atol=0.1)
    assert np.allclose(matched_std, -1.0, atol=0.1)


def test_finetuning_consumes_exactly_the_adaptation_budget(tiny_multitask):
    tasks = baselines.held_out_tasks("reach", 2, seed=0)
    episodes, steps = 2, 2
    before = {k: v.clone() for k, v in tiny_multitask.model.policy.state_dict().items()}
    result = baselines.finetune_on_tasks(tiny_multitask, tasks, episodes, steps, seed=0)
    horizon = baselines.episode_length("reach")
    assert horizon == 50
    # K updates of E episodes x T steps for learning; K+1 evaluations of E fresh episodes.
    assert result.train_steps.tolist() == [steps * episodes * horizon] * 2
    assert result.eval_steps.tolist() == [(steps + 1) * episodes * horizon] * 2
    assert result.returns.shape == result.success.shape == (steps + 1, 2)
    assert np.all(np.isfinite(result.returns)) and np.all(result.returns < 0)
    assert result.task_ids == [t.task_id for t in tasks]
    # Fine-tuning worked on copies: the multi-task policy itself is unchanged.
    after = tiny_multitask.model.policy.state_dict()
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)


def test_evaluation_episodes_are_seeded(tiny_multitask):
    task = baselines.held_out_tasks("reach", 1, seed=0)[0]
    env = baselines.make_env("reach")
    try:
        a = baselines.evaluate_on_task(tiny_multitask, env, task, 2, seed=5)
        b = baselines.evaluate_on_task(tiny_multitask, env, task, 2, seed=5)
    finally:
        env.close()
    assert np.array_equal(a.returns, b.returns) and a.steps == 100


def test_scratch_search_stops_at_the_cap_and_reports_it():
    task = baselines.held_out_tasks("reach", 1, seed=0)[0]
    # Reach rewards are negative distances: a return of 0 cannot be reached.
    res = baselines.ppo_from_scratch_to_target(task, target_return=0.0, cap=200, eval_every=100,
                                               episodes=1, seed=0, ppo_kwargs=TINY_PPO)
    assert not res.reached and res.steps == 200 and res.describe() == "> 200"
    assert [s for s, _ in res.history] == [100, 200]


def test_scratch_search_stops_when_the_target_is_reached():
    task = baselines.held_out_tasks("reach", 1, seed=0)[0]
    res = baselines.ppo_from_scratch_to_target(task, target_return=-1e9, cap=10_000,
                                               eval_every=100, episodes=1, seed=0,
                                               ppo_kwargs=TINY_PPO)
    assert res.reached and res.steps == 100 and res.describe() == "100"
