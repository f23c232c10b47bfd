"""``bench/walk_prior_probe.py``: a world-frame command is constant, so holding it changes
nothing; a base-frame one turns with the robot, so holding it changes the episode."""

from __future__ import annotations

import pytest

from bench.walk_prior_probe import probe
from bench.walk_skill_prior import pretrain
from metarobot.training.evaluate import load_trained_policy

TINY = ("meta_batch.tasks=2", "meta_batch.episodes=1", "sampler.envs_per_worker=2",
        "policy.hidden=[16]", "policy.init_log_std=0.0")


@pytest.mark.parametrize("command_frame", ["base", "world"])
def test_holding_the_command_matters_only_in_the_base_frame(tmp_path, command_frame):
    policy = load_trained_policy(pretrain(tmp_path / "prior", 1, 0, 0, command_frame, TINY))
    figures = probe(policy, tasks=4, episodes=1, seed=0)
    unchanged = [figures[f"own command, {h}"] == figures[f"command held, {h}"]
                 for h in ("forward", "backward")]
    if command_frame == "world":
        assert all(unchanged)
    else:  # the untrained walker drifts in yaw, so its command turns
        assert not all(unchanged)
