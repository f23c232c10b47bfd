"""``bench/walk_skill_prior.py``: the warm-started policy, with its context set to a
normalised command, acts exactly as the pretrained walker told that command."""

from __future__ import annotations

import pytest
import torch

from bench.walk_skill_prior import pretrain, warm_start
from metarobot.core.policy import policy_forward
from metarobot.training.evaluate import load_trained_policy

TINY = ("meta_batch.tasks=2", "meta_batch.episodes=1", "sampler.envs_per_worker=2",
        "policy.hidden=[64, 64]")


@pytest.mark.parametrize("command_frame, config", [("base", "walk-skill-cpu"),
                                                    ("world", "walk-skill-world-cpu")])
def test_the_warm_start_is_the_pretrained_walker_with_the_command_as_context(
        tmp_path, command_frame, config):
    prior_dir = pretrain(tmp_path / "prior", 1, 0, 0, command_frame, TINY)
    warm_start(prior_dir, config, tmp_path / "run", 0, 0)
    prior, meta = load_trained_policy(prior_dir), load_trained_policy(tmp_path / "run")
    assert meta.iteration == 0 and meta.env_steps == prior.env_steps > 0
    obs = torch.randn(6, prior.model.obs_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, _ = policy_forward(prior.model, prior.params, obs)
        command = prior.model.normalize(obs)[:, meta.model.obs_dim:]
        got, _ = policy_forward(meta.model, {**meta.params, "context": command},
                                obs[:, :meta.model.obs_dim])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # The starting context is the zero command, normalised: neither direction.
    zero = torch.zeros(1, prior.model.obs_dim)
    torch.testing.assert_close(meta.params["context"],
                               prior.model.normalize(zero)[0, meta.model.obs_dim:])


def test_a_world_frame_context_is_the_base_frame_command_rotated_by_the_yaw(tmp_path):
    prior_dir = pretrain(tmp_path / "prior", 1, 0, 0, "base", TINY)
    warm_start(prior_dir, "walk-skill-yaw-cpu", tmp_path / "run", 0, 0)
    prior, meta = load_trained_policy(prior_dir), load_trained_policy(tmp_path / "run")
    assert meta.model.rotate_context
    gen = torch.Generator().manual_seed(0)
    proprio = torch.randn(6, meta.model.obs_dim - 2, generator=gen)
    yaw = torch.rand(6, generator=gen) * 6.0 - 3.0
    world = torch.randn(6, 2, generator=gen) * 0.5  # a command in the world frame, m/s
    base = torch.stack([torch.cos(yaw) * world[:, 0] + torch.sin(yaw) * world[:, 1],
                        torch.cos(yaw) * world[:, 1] - torch.sin(yaw) * world[:, 0]], 1)
    with torch.no_grad():
        want, _ = policy_forward(prior.model, prior.params, torch.cat([proprio, base], 1))
        got, _ = policy_forward(
            meta.model, {**meta.params, "context": world},
            torch.cat([proprio, torch.cos(yaw)[:, None], torch.sin(yaw)[:, None]], 1))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(meta.params["context"], torch.zeros(2))  # the zero command
