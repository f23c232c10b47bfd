"""The terrain curriculum: task scaling, the level rule, the trainer's use and resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metarobot import api
from metarobot.training.checkpoint import load_checkpoint
from metarobot.training.config import CurriculumConfig
from metarobot.training.curriculum import TerrainCurriculum
from metarobot.training.trainer import MetaTrainer
from sim_envs.locomotion import HELD_OUT_DIFFICULTY
from sim_envs.registry import make_family

LOCOMOTION = make_family("locomotion")


def test_a_level_scales_only_the_terrain_difficulty_and_keeps_the_split():
    tasks = LOCOMOTION.sample_tasks(40, "train", seed=3)
    for task in tasks:
        group = LOCOMOTION.difficulty_group(task)
        assert group == (None if task.params.terrain == "flat" else task.params.terrain)
        easier = LOCOMOTION.at_level(task, 0.25)
        assert easier.split == "train"
        assert easier.params.difficulty == pytest.approx(0.25 * task.params.difficulty)
        same = {k: v for k, v in easier.params.to_dict().items() if k != "difficulty"}
        assert same == {k: v for k, v in task.params.to_dict().items() if k != "difficulty"}
        assert LOCOMOTION.at_level(task, 1.0) == task
    with pytest.raises(ValueError, match="level"):
        LOCOMOTION.at_level(tasks[0], 1.5)
    reach = make_family("reach")
    with pytest.raises(NotImplementedError, match="reach"):
        reach.difficulty_group(reach.sample_tasks(1)[0])


def test_levels_go_up_on_success_down_on_failure_and_stay_in_range():
    cfg = CurriculumConfig(enabled=True, start=0.5, step=0.1, promote=0.7, demote=0.4,
                           min_level=0.1)
    curriculum = TerrainCurriculum(LOCOMOTION, cfg)
    groups = ["stairs", "stairs", "slopes", None, "rough"]
    # stairs: mean 0.75 -> up; slopes 0.5 -> stays; rough 0.0 -> down; flat is not levelled.
    curriculum.update(groups, np.array([0.6, 0.9, 0.5, 1.0, 0.0]))
    assert curriculum.levels == pytest.approx({"stairs": 0.6, "slopes": 0.5, "rough": 0.4})
    assert curriculum.level("obstacles") == 0.5  # not seen yet: the start level
    for _ in range(10):
        curriculum.update(groups, np.array([1.0, 1.0, 0.0, 0.0, 0.0]))
    assert curriculum.levels == pytest.approx({"stairs": 1.0, "slopes": 0.1, "rough": 0.1})
    with pytest.raises(ValueError, match="groups"):
        curriculum.update(groups, np.zeros(2))


def test_focus_gives_the_lowest_level_group_its_share_of_the_batch():
    cfg = CurriculumConfig(enabled=True, start=0.5, focus=0.5)
    curriculum = TerrainCurriculum(LOCOMOTION, cfg)
    assert curriculum.focus_group() == "rough"  # all at the start level: the first listed
    curriculum.levels = {"rough": 0.9, "slopes": 0.6, "stairs": 0.2, "obstacles": 0.7}
    assert curriculum.focus_group() == "stairs"
    tasks = LOCOMOTION.sample_tasks(10, "train", seed=11)
    focused, groups = curriculum.apply(tasks, seed=11)
    assert groups.count("stairs") == 5 > [LOCOMOTION.difficulty_group(t)
                                          for t in tasks].count("stairs")
    for original, task in zip(tasks, focused, strict=True):
        assert task.split == "train"
        group = LOCOMOTION.difficulty_group(original)
        if task.params.terrain_seed == original.params.terrain_seed:  # kept, levelled
            level = 1.0 if group is None else curriculum.level(group)
            assert task == LOCOMOTION.at_level(original, level)
        else:  # replaced: only tasks of other groups, only by the focus group's
            assert group != "stairs" and task.params.terrain == "stairs"
    assert curriculum.apply(tasks, seed=11) == (focused, groups)  # same seed, same batch
    assert curriculum.apply(tasks, seed=12)[0] != focused
    unfocused = TerrainCurriculum(LOCOMOTION, CurriculumConfig(enabled=True, start=0.5))
    assert [t.params.terrain for t in unfocused.apply(tasks, seed=11)[0]] == [
        t.params.terrain for t in tasks]


def test_a_curriculum_needs_a_family_with_difficulty():
    with pytest.raises(ValueError, match="curriculum.enabled"):
        api.resolve_config("reach-cpu", overrides=["curriculum.enabled=true"])
    with pytest.raises(ValueError, match="curriculum.promote"):
        api.resolve_config("locomotion-cpu", overrides=["curriculum.enabled=true",
                                                        "curriculum.promote=0.3"])


TINY = ["meta_batch.tasks=4", "meta_batch.episodes=1", "sampler.num_workers=0",
        "sampler.envs_per_worker=4", "checkpoint_every=1", "device=cpu",
        "policy.hidden=[16]", "advantages.value_hidden=[16]", "curriculum.enabled=true",
        "curriculum.start=0.5", "curriculum.step=0.2", "curriculum.promote=0.9",
        "curriculum.demote=0.8"]


def test_the_trainer_trains_on_levelled_tasks_moves_levels_and_resumes_them(tmp_path):
    cfg = api.resolve_config("locomotion-cpu", overrides=TINY + ["iterations=2"])
    trainer = MetaTrainer(cfg, tmp_path / "a", progress=False)
    drawn = []
    sample_tasks = trainer.family.sample_tasks

    def spy(*args, **kwargs):
        drawn.append(sample_tasks(*args, **kwargs))
        return drawn[-1]

    trainer.family.sample_tasks = spy
    trainer.train()
    trainer.close()

    # Replay the rule on what the trainer recorded: the tasks it trained on are the drawn
    # ones at the levels of that moment, and the levels move by the post-update success.
    expected = TerrainCurriculum(LOCOMOTION, cfg.curriculum)
    for it, tasks in enumerate(drawn):
        record = np.load(tmp_path / "a" / "episodes" / f"iter_{it:05d}.npz")
        levelled, groups = expected.apply(tasks, seed=cfg.seed * 1_000_003 + it)
        assert list(record["task_ids"]) == [t.task_id for t in levelled]
        for original, task in zip(tasks, levelled, strict=True):
            assert task.params.difficulty <= original.params.difficulty <= HELD_OUT_DIFFICULTY
        expected.update(groups, record["success_1"].mean(1))
    saved = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    assert saved["algo_state"]["curriculum_levels"] == pytest.approx(expected.levels)
    assert any(level != 0.5 for level in expected.levels.values())  # the rule moved levels

    # An interrupted run resumes with the same levels and ends where the straight one did.
    first = MetaTrainer(api.resolve_config("locomotion-cpu", overrides=TINY + ["iterations=1"]),
                        tmp_path / "b", progress=False)
    first.train()
    first.close()
    resumed = MetaTrainer.resume(tmp_path / "b", progress=False, iterations=2)
    resumed.train()
    resumed.close()
    other = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert other["algo_state"]["curriculum_levels"] == saved["algo_state"]["curriculum_levels"]
    for name, value in saved["model"]["params"].items():
        assert torch.equal(value, other["model"]["params"][name]), name
