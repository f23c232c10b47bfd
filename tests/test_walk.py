"""Walk family: the locomotion env restricted to flat ground and two hidden headings."""

from __future__ import annotations

import dataclasses
import math

import gymnasium as gym
import numpy as np
import pytest
from envtools import trace

import sim_envs  # noqa: F401  (registers the gymnasium ids)
from sim_envs import Task
from sim_envs.locomotion import LocomotionEnv, LocomotionFamily, LocomotionParams
from sim_envs.walk import HEADINGS, HELD_OUT_PAYLOAD, WALK_SPEED, WalkEnv, WalkFamily

BASE = LocomotionParams(terrain="flat", difficulty=0.0, terrain_seed=0, friction=1.0,
                        payload=1.0, motor_strength=1.0, heading=0.0, speed=WALK_SPEED)


def test_split_by_payload_with_both_headings_in_both_splits():
    family = WalkFamily()
    train = family.sample_tasks(40, "train", seed=0)
    test = family.sample_tasks(40, "test", seed=0)
    assert family.sample_tasks(40, "test", seed=0) == test
    assert all(t.params.payload <= HELD_OUT_PAYLOAD for t in train)
    assert all(t.params.payload > HELD_OUT_PAYLOAD for t in test)
    for tasks in (train, test):
        assert {t.params.heading for t in tasks} == set(HEADINGS)
        assert {(t.params.terrain, t.params.speed) for t in tasks} == {("flat", WALK_SPEED)}
        assert all(t.family == "walk" for t in tasks)
    assert family.split_of(dataclasses.replace(BASE, payload=HELD_OUT_PAYLOAD)) == "train"
    assert family.split_of(dataclasses.replace(BASE, payload=2.3, heading=math.pi)) == "test"


@pytest.mark.parametrize("change, message", [
    ({"terrain": "rough", "difficulty": 0.2}, "flat"),
    ({"heading": 1.0}, "heading"),
    ({"speed": 0.8}, "speed"),
])
def test_parameters_outside_the_walk_space_are_rejected(change, message):
    with pytest.raises(ValueError, match=message):
        WalkFamily().make_task(dataclasses.replace(BASE, **change))
    with pytest.raises(ValueError, match=message):
        Task.from_dict({"family": "walk", "split": "train",
                        "params": dataclasses.replace(BASE, **change).to_dict()})


def test_a_locomotion_task_is_refused_by_the_walk_env():
    locomotion_task = LocomotionFamily().make_task(BASE)
    env = WalkEnv()
    try:
        with pytest.raises(ValueError, match="walk"):
            env.set_task(locomotion_task)
    finally:
        env.close()


def test_walk_runs_the_locomotion_physics_unchanged():
    """Same parameters, seed and actions: the walk and locomotion envs agree bit for bit."""
    actions = np.random.default_rng(0).uniform(-1, 1, (30, 12)).astype(np.float32)
    params = dataclasses.replace(BASE, heading=math.pi, payload=2.5)

    walk = gym.make("sim_envs/Walk-v0")
    locomotion = LocomotionEnv(task=LocomotionFamily().make_task(params))
    try:
        walk.unwrapped.set_task(WalkFamily().make_task(params))
        assert np.array_equal(trace(walk, actions, seed=5), trace(locomotion, actions, seed=5))
    finally:
        walk.close()
        locomotion.close()
