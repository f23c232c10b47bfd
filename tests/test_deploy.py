"""The torch-free deploy runtime: loading, acting, safe adaptation, control loop, CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch

import sim_envs  # noqa: F401  (registers sim_envs/Reach-v0)
from deploy import (
    AdaptivePolicy,
    BundleError,
    GymController,
    SafetyConfig,
    load_bundle,
    run_control_loop,
)
from deploy.cli import main as cli_main
from metarobot.core.advantages import compute_advantages as torch_compute_advantages
from metarobot.core.inner import InnerBatch, inner_step
from metarobot.core.policy import GaussianMLPPolicy, ParamLayout, log_prob, policy_forward
from metarobot.export.bundle import export_bundle

ROOT = Path(__file__).resolve().parents[1]
LR, CLIP, GAMMA, LAM = 0.05, 0.2, 0.99, 0.95


@pytest.fixture(scope="module")
def reach_env():
    env = gymnasium.make("sim_envs/Reach-v0")
    yield env
    env.close()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, reach_env):
    """A Reach-shaped bundle (1- and 2-step adapt graphs) and its torch model/params."""
    obs_dim = reach_env.observation_space.shape[0]
    act_dim = reach_env.action_space.shape[0]
    gen = torch.Generator().manual_seed(0)
    model = GaussianMLPPolicy(obs_dim, act_dim, (32, 32), init_log_std=0.3)
    model.set_normalizer(0.1 * torch.randn(obs_dim, generator=gen),
                         torch.rand(obs_dim, generator=gen) + 0.5)
    params = {k: (v + 0.1 * torch.randn(v.shape, generator=gen)).detach()
              for k, v in model.init_params().items()}
    out = export_bundle(model.eval(), params, tmp_path_factory.mktemp("deploy") / "reach",
                        family="reach", env_id="sim_envs/Reach-v0",
                        observation_space=reach_env.observation_space,
                        action_space=reach_env.action_space,
                        inner_config={"loss": "lvc", "lr": LR, "clip": CLIP, "steps": 1,
                                      "gamma": GAMMA, "lam": LAM, "baseline": "linear_feature"},
                        adapt_steps_options=(1, 2), safety={"max_kl": 2.5})
    return model, params, out


def drive(policy, episodes: int, length: int = 20, seed: int = 0, close_last: bool = True):
    """Act/observe synthetic episodes (random observations, reward -|a|^2)."""
    rng = np.random.default_rng(seed)
    for e in range(episodes):
        for t in range(length):
            obs = rng.standard_normal(policy.obs_dim).astype(np.float32)
            action = policy.act(obs)
            last = t == length - 1 and (close_last or e < episodes - 1)
            policy.observe(obs, action, float(-np.sum(action ** 2) + obs[0]), False, last)


# ---------------------------------------------------------------- torch-free
def test_runtime_runs_with_torch_blocked(bundle):
    script = textwrap.dedent("""
        import importlib.abc, json, sys

        class BlockTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError(f"torch is blocked ({name})")
                return None

        sys.meta_path.insert(0, BlockTorch())
        try:
            import torch  # noqa: F401
            sys.exit("the torch blocker did not work")
        except ImportError:
            pass
        import numpy as np
        import deploy, deploy.advantages, deploy.bundle, deploy.cli, deploy.controller
        from deploy import AdaptivePolicy

        policy = AdaptivePolicy.load(sys.argv[1], family="reach", seed=0)
        rng = np.random.default_rng(0)
        for e in range(3):
            for t in range(20):
                obs = rng.standard_normal(policy.obs_dim).astype(np.float32)
                a = policy.act(obs)
                policy.observe(obs, a, float(obs[0] - (a * a).sum()), False, t == 19)
        before = policy.params
        report = policy.adapt(2)
        print(json.dumps({"accepted": report.accepted,
                          "moved": float(np.abs(policy.params - before).max()),
                          "torch": sorted(m for m in sys.modules if m.split(".")[0] == "torch")}))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script, str(bundle[2])], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"accepted": True, "moved": result["moved"], "torch": []}
    assert result["moved"] > 1e-4


# ---------------------------------------------------------------- acting
def test_act_validates_observations(bundle):
    policy = AdaptivePolicy.load(bundle[2], seed=0)
    dim = policy.obs_dim
    with pytest.raises(ValueError, match=rf"shape \({dim},\), got \({dim + 1},\)"):
        policy.act(np.zeros(dim + 1, np.float32))
    with pytest.raises(ValueError, match="shape"):
        policy.act(np.zeros((1, dim), np.float32))
    with pytest.raises(ValueError, match="dtype must be floating point"):
        policy.act(np.zeros(dim, np.int64))
    bad = np.zeros(dim, np.float32)
    bad[3] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf .*at indices \[3\]"):
        policy.act(bad)
    bad[3] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        policy.act(bad)
    action = policy.act(np.zeros(dim, np.float64))  # float64 is accepted
    assert action.shape == (policy.act_dim,) and action.dtype == np.float32


def test_act_is_seeded_clipped_and_matches_the_policy_graph(bundle):
    model, params, out = bundle
    a, b = AdaptivePolicy.load(out, seed=7), AdaptivePolicy.load(out, seed=7)
    obs = np.random.default_rng(1).standard_normal((200, a.obs_dim)).astype(np.float32)
    acts_a = np.array([a.act(o) for o in obs])
    assert np.array_equal(acts_a, np.array([b.act(o) for o in obs]))
    assert acts_a.min() >= -1.0 and acts_a.max() <= 1.0
    assert (np.abs(acts_a) == 1.0).any()  # std exp(0.3): some samples were clipped
    with torch.no_grad():
        mean = policy_forward(model, params, torch.from_numpy(obs))[0].numpy()
    det = np.array([a.act(o, deterministic=True) for o in obs])
    np.testing.assert_allclose(det, np.clip(mean, -1, 1), atol=1e-5, rtol=0)


def test_observe_checks_its_input(bundle):
    policy = AdaptivePolicy.load(bundle[2], seed=0)
    obs = np.zeros(policy.obs_dim, np.float32)
    with pytest.raises(ValueError, match="must follow act"):
        policy.observe(obs, np.zeros(policy.act_dim), 0.0, False, False)
    action = policy.act(obs)
    with pytest.raises(ValueError, match="not the action returned"):
        policy.observe(obs, action + 0.5, 0.0, False, False)
    with pytest.raises(ValueError, match="not the observation"):
        policy.observe(obs + 1, action, 0.0, False, False)
    policy.observe(obs, action, 1.0, False, False)
    with pytest.raises(ValueError, match="reward must be finite"):
        policy.observe(obs, policy.act(obs), math.nan, False, False)
    # The episode has a gap now: it ends normally but is not kept for adaptation.
    policy.observe(obs, policy.act(obs), 1.0, False, True)
    assert policy.num_episodes == 0 and policy.dropped_episodes == 1
    policy.observe(obs, policy.act(obs), 1.0, False, True)
    assert policy.num_episodes == 1  # the next episode is


# ---------------------------------------------------------------- adaptation = torch
def test_device_adaptation_follows_torch_inner_steps(bundle, reach_env):
    """Held-out Reach task, three rounds (K = 1, 2, 3; K = 3 chains the 1-step graph):
    the device's adapted parameters equal torch ``inner_step`` on the same data.

    No trial: each round's episodes must be the data of the round's update, and whether a
    trial keeps an update depends on the returns (tests/test_adapt_safety.py tests it)."""
    model, params, out = bundle
    layout = ParamLayout.of(params)
    policy = AdaptivePolicy.load(out, family="reach", seed=0,
                                 safety=SafetyConfig(max_kl=2.5, trial_episodes=0))
    task = reach_env.unwrapped.sample_tasks(1, split="test", seed=3)[0]
    reach_env.unwrapped.set_task(task)
    controller = GymController(reach_env, seed=11)
    theta = dict(params)
    for steps in (1, 2, 3):
        seen = []
        for _ in range(3):
            controller.start_episode()
            obs_l, act_l, rew_l, done = [], [], [], False
            while not done:
                obs = controller.read_observation()
                action = policy.act(obs)
                controller.apply_action(action)
                reward = controller.read_reward()
                terminated, truncated = controller.episode_status()
                policy.observe(obs, action, reward, terminated, truncated)
                obs_l.append(obs)
                act_l.append(action)
                rew_l.append(reward)
                done = terminated or truncated
            seen.append((obs_l, act_l, rew_l))
        recorded = policy.recorded_episodes()
        assert len(recorded) == 3
        for (obs_l, act_l, rew_l), rec in zip(seen, recorded):  # the env's true trajectory
            np.testing.assert_array_equal(rec["obs"], np.asarray(obs_l, np.float32))
            np.testing.assert_array_equal(np.clip(rec["act"], -1, 1), np.asarray(act_l))
            np.testing.assert_array_equal(rec["rew"], np.asarray(rew_l, np.float32))

        # The trainer's side: torch advantages on [M=1, E, T], its padded inner batch.
        horizon = max(len(r["rew"]) for r in recorded)
        obs_t = torch.zeros(1, 3, horizon, policy.obs_dim)
        act_t = torch.zeros(1, 3, horizon, policy.act_dim)
        rew_t, mask_t, logp_t = (torch.zeros(1, 3, horizon) for _ in range(3))
        for i, r in enumerate(recorded):
            t = len(r["rew"])
            obs_t[0, i, :t] = torch.from_numpy(r["obs"])
            act_t[0, i, :t] = torch.from_numpy(r["act"])
            rew_t[0, i, :t] = torch.from_numpy(r["rew"])
            logp_t[0, i, :t] = torch.from_numpy(r["logp"])
            mask_t[0, i, :t] = 1.0
        adv, _ = torch_compute_advantages(obs_t, rew_t, mask_t, GAMMA, LAM)
        with torch.no_grad():  # the recorded log-probs are the acting policy's
            logp_now = log_prob(model, theta, obs_t, act_t)
        np.testing.assert_allclose((logp_now * mask_t).numpy(), logp_t.numpy(), atol=1e-5)
        batch = InnerBatch(obs_t.flatten(0, 2), act_t.flatten(0, 2), adv.flatten(),
                           logp_t.flatten(), mask_t.flatten())
        for _ in range(steps):
            theta, _, _ = inner_step(model, theta, batch, LR, CLIP)
        theta = {k: v.detach() for k, v in theta.items()}

        before = policy.params
        report = policy.adapt(steps)
        assert report.accepted and report.applied, report
        assert report.transitions == 3 * horizon and report.update_scale == 1.0
        np.testing.assert_allclose(policy.params, layout.flatten(theta).numpy(), atol=1e-5,
                                   rtol=0)
        assert np.abs(policy.params - before).max() > 1e-3
        assert policy.num_episodes == 0  # the data of the old parameters is consumed


# ---------------------------------------------------------------- safety
def test_non_finite_adaptation_is_rejected_and_last_good_params_kept(bundle, tmp_path):
    out = bundle[2]
    good = AdaptivePolicy.load(out, seed=0)
    drive(good, 2)
    assert good.adapt().accepted
    good.save_params(tmp_path / "adapted.npz")

    base = load_bundle(out)
    policy = AdaptivePolicy(dataclasses.replace(base, lr=np.asarray(np.inf, np.float32)),
                            seed=1)
    policy.load_params(tmp_path / "adapted.npz")
    last_good = policy.params
    assert not np.array_equal(last_good, base.params)
    drive(policy, 2, seed=1)
    report = policy.adapt()
    assert not report.accepted and not report.applied
    assert "non-finite" in report.reason
    assert np.array_equal(policy.params, last_good)
    assert policy.num_episodes == 2  # data kept: nothing was applied
    assert np.isfinite(policy.act(np.zeros(policy.obs_dim, np.float32))).all()


def test_update_norm_is_clipped(bundle):
    policy = AdaptivePolicy.load(bundle[2], seed=0,
                                 safety=SafetyConfig(max_update_norm=1e-3))
    drive(policy, 2)
    before = policy.params
    report = policy.adapt()
    assert report.accepted and report.update_norm > 1e-3
    assert report.update_scale == pytest.approx(1e-3 / report.update_norm)
    assert "scaled" in report.reason
    moved = np.linalg.norm(policy.params.astype(np.float64) - before)
    assert moved == pytest.approx(1e-3, rel=1e-2)


def test_kl_above_max_is_rejected_when_halving_cannot_reach_it(bundle):
    policy = AdaptivePolicy.load(bundle[2], seed=0,
                                 safety=SafetyConfig(max_kl=1e-12, max_backtracks=3))
    drive(policy, 2)
    before = policy.params
    report = policy.adapt()
    assert not report.accepted and "KL" in report.reason and report.kl > 1e-12
    assert report.backtracks == 3 and "after 3 halvings" in report.reason
    assert np.array_equal(policy.params, before)


def test_bundle_safety_defaults_are_used_unless_overridden(bundle, tmp_path):
    assert AdaptivePolicy.load(bundle[2]).safety.max_kl == 2.5
    assert AdaptivePolicy.load(bundle[2], safety=SafetyConfig(max_kl=0.5)).safety.max_kl == 0.5
    model, params, _ = bundle
    with pytest.raises(ValueError, match="safety"):
        export_bundle(model, params, tmp_path / "bad", family="reach",
                      env_id="sim_envs/Reach-v0",
                      observation_space=gymnasium.spaces.Box(-1, 1, (model.obs_dim,)),
                      action_space=gymnasium.spaces.Box(-1, 1, (model.act_dim,)),
                      inner_config={"loss": "lvc", "lr": LR, "clip": CLIP, "steps": 1,
                                    "gamma": GAMMA, "lam": LAM, "baseline": "linear_feature"},
                      safety={"max_kl": float("nan")})
    assert not (tmp_path / "bad").exists()


def test_non_finite_action_rolls_back(bundle, tmp_path):
    policy = AdaptivePolicy.load(bundle[2], seed=0)
    huge = np.full(policy.bundle.layout.size, 3e38, np.float32)  # finite, overflows in use
    meta = {"format": "metarobot.params", "format_version": 1, "family": "reach",
            "env_id": "sim_envs/Reach-v0", "layout": policy.bundle.layout.to_dict(),
            "base_params_sha256": policy.bundle.metadata["params"]["sha256"],
            "sha256": hashlib.sha256(huge.astype("<f4").tobytes()).hexdigest()}
    np.savez(tmp_path / "huge.npz", params=huge, meta=np.asarray(json.dumps(meta)))
    drive(policy, 2)
    assert policy.adapt().accepted
    adapted = policy.params
    obs = np.ones(policy.obs_dim, np.float32)
    policy.load_params(tmp_path / "huge.npz")
    with pytest.warns(RuntimeWarning, match="rolled back"):
        action = policy.act(obs)
    # Back to the previous (adapted) parameters.
    assert np.isfinite(action).all() and policy.rollbacks == 1
    assert np.array_equal(policy.params, adapted)
    policy.end_episode()
    policy.load_params(tmp_path / "huge.npz")
    policy.load_params(tmp_path / "huge.npz")  # the previous parameters are bad too
    with pytest.warns(RuntimeWarning, match="rolled back"):
        action = policy.act(obs)
    assert np.isfinite(action).all() and policy.rollbacks == 3
    assert np.array_equal(policy.params, policy.bundle.params)  # the meta-learned ones


def test_async_adaptation_swaps_at_the_episode_boundary(bundle):
    out = bundle[2]
    policy, reference = AdaptivePolicy.load(out, seed=3), AdaptivePolicy.load(out, seed=3)
    drive(policy, 3, close_last=False)  # the third episode is still running
    drive(reference, 2)
    before = policy.params
    future = policy.adapt_async(1)
    obs = np.zeros(policy.obs_dim, np.float32)
    for _ in range(5):  # the control loop keeps acting meanwhile
        policy.observe(obs, policy.act(obs), 0.0, False, False)
    report = future.result(timeout=60)
    assert report.accepted and not report.applied and policy.update_pending
    assert np.array_equal(policy.params, before)  # not mid-episode
    policy.observe(obs, policy.act(obs), 0.0, False, True)
    assert not policy.update_pending and policy.num_episodes == 0
    # Same two episodes, adapted synchronously: the same parameters.
    assert reference.adapt(1).applied
    np.testing.assert_array_equal(policy.params, reference.params)
    policy.reset_adaptation()
    assert np.array_equal(policy.params, policy.bundle.params) and policy.num_episodes == 0
    policy.close()


def test_adapt_without_data_or_bad_steps(bundle):
    policy = AdaptivePolicy.load(bundle[2], seed=0)
    report = policy.adapt()
    assert not report.accepted and "0 completed episodes" in report.reason
    with pytest.raises(ValueError, match="positive int"):
        policy.adapt(0)


# ---------------------------------------------------------------- bundle and params files
def test_bundle_validation_errors(bundle, tmp_path):
    out = bundle[2]

    def copy(name):
        target = tmp_path / name
        shutil.copytree(out, target)
        return target

    with pytest.raises(BundleError, match="family 'reach', expected 'grasp'"):
        AdaptivePolicy.load(out, family="grasp")
    tampered = copy("tampered")
    data = bytearray((tampered / "adapt.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tampered / "adapt.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="adapt.onnx does not match its SHA-256"):
        AdaptivePolicy.load(tampered)
    truncated = copy("truncated")
    (truncated / "policy.onnx").write_bytes((out / "policy.onnx").read_bytes()[:100])
    with pytest.raises(BundleError, match="truncated or replaced"):
        load_bundle(truncated)
    no_manifest = copy("no_manifest")
    (no_manifest / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        load_bundle(no_manifest)

    def edit_manifest(name, edit):
        target = copy(name)
        manifest = json.loads((target / "manifest.json").read_text())
        edit(manifest)
        (target / "manifest.json").write_text(json.dumps(manifest))
        return target

    future = edit_manifest("v2", lambda m: m.update(format_version=2))
    with pytest.raises(BundleError, match="format version 2; this runtime reads version 1"):
        load_bundle(future)
    relabelled = edit_manifest("relabel", lambda m: m["metadata"].update(family="grasp"))
    with pytest.raises(BundleError, match="embedded metadata differs"):
        AdaptivePolicy.load(relabelled)
    bad_layout = edit_manifest("layout",
                               lambda m: m["metadata"]["params"]["layout"].update(size=7))
    with pytest.raises(BundleError, match="sums to .* but P = 7"):
        load_bundle(bad_layout)
    swapped = copy("swapped")  # other params with a consistent file hash
    np.save(swapped / "params.npy", np.load(out / "params.npy") + 1)
    manifest = json.loads((swapped / "manifest.json").read_text())
    blob = (swapped / "params.npy").read_bytes()
    manifest["files"]["params.npy"] = {"size": len(blob),
                                       "sha256": hashlib.sha256(blob).hexdigest()}
    (swapped / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="do not match the metadata's SHA-256"):
        load_bundle(swapped)


def test_params_save_load_round_trip_and_validation(bundle, tmp_path):
    policy = AdaptivePolicy.load(bundle[2], seed=0)
    drive(policy, 2)
    assert policy.adapt().accepted
    path = policy.save_params(tmp_path / "adapted.npz")
    other = AdaptivePolicy.load(bundle[2], seed=0)
    other.load_params(path)
    assert np.array_equal(other.params, policy.params)
    with pytest.raises(ValueError, match="read-only"):
        other.params[0] = 1.0

    with np.load(path) as data:
        params, meta = data["params"], json.loads(str(data["meta"]))

    def write(name, p=params, **changes):
        np.savez(tmp_path / name, params=p, meta=np.asarray(json.dumps({**meta, **changes})))
        return tmp_path / name

    with pytest.raises(BundleError, match="family 'grasp'"):
        other.load_params(write("fam.npz", family="grasp"))
    with pytest.raises(BundleError, match="other meta-learned parameters"):
        other.load_params(write("base.npz", base_params_sha256="0" * 64))
    with pytest.raises(BundleError, match="layout"):
        layout = {**meta["layout"], "names": ["x"] * len(meta["layout"]["names"])}
        other.load_params(write("layout.npz", layout=layout))
    with pytest.raises(BundleError, match="SHA-256"):
        other.load_params(write("corrupt.npz", p=params + 1))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="not a readable"):
        other.load_params(tmp_path / "junk.npz")
    other.act(np.zeros(other.obs_dim, np.float32))
    with pytest.raises(RuntimeError, match="during an episode"):
        other.load_params(path)


# ---------------------------------------------------------------- control loop
class SyntheticRobot:
    """A controller with a fake clock: each step costs `cost` seconds of fake time."""

    def __init__(self, obs_dim, episode_length, costs, clock):
        self.obs_dim, self.episode_length, self.costs, self.clock = obs_dim, episode_length, \
            costs, clock
        self.rng = np.random.default_rng(0)
        self.t = 0
        self.steps = 0
        self.actions = []

    def start_episode(self):
        self.t = 0

    def read_observation(self):
        return self.rng.standard_normal(self.obs_dim).astype(np.float32)

    def apply_action(self, action):
        self.clock.now += self.costs[self.steps]
        self.steps += 1
        self.t += 1
        self.actions.append(action)

    def read_reward(self):
        return 1.0

    def episode_status(self):
        return False, self.t >= self.episode_length


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        assert seconds >= 0
        self.now += seconds


def test_control_loop_counts_missed_deadlines(bundle):
    policy = AdaptivePolicy.load(bundle[2], seed=0)
    clock = FakeClock()
    costs = [0.002] * 10
    costs[3] = 0.015  # one step overruns the 10 ms period
    robot = SyntheticRobot(policy.obs_dim, 4, costs, clock)
    ended = []
    report = run_control_loop(robot, policy, 100.0, 10, clock=clock, sleep=clock.sleep,
                              on_episode_end=lambda i, ret: ended.append((i, ret)))
    assert report.missed_deadlines == 1
    assert report.step_time_max == pytest.approx(0.015)
    assert report.start_lateness_max == pytest.approx(0.0)  # the fake sleep is exact
    assert report.episode_returns == (4.0, 4.0) and ended == [(0, 4.0), (1, 4.0)]
    # 3 steps on schedule, the overrun restarts the schedule, then 6 more full periods.
    assert report.wall_time == pytest.approx(0.03 + 0.015 + 0.06)
    assert policy.num_episodes == 2


class PointEnv(gymnasium.Env):
    """A cheap env with the bundle's spaces: reward for pushing obs[0] up."""

    def __init__(self, obs_dim, act_dim):
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (act_dim,), np.float32)
        self.state = np.zeros(obs_dim, np.float32)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.state = self.np_random.standard_normal(self.state.shape).astype(np.float32)
        self.t = 0
        return self.state.copy(), {}

    def step(self, action):
        self.state[0] += 0.1 * float(action[0])
        self.t += 1
        return self.state.copy(), float(action[0]), False, self.t >= 10, {"success": False}


def test_control_loop_keeps_running_while_adapting(bundle):
    """GymController + 200 Hz loop; every episode end starts an async adaptation (no
    trial: it would hold back the next adaptations, tested in test_adapt_safety)."""
    policy = AdaptivePolicy.load(bundle[2], seed=0, safety=SafetyConfig(trial_episodes=0))
    futures = []
    report = run_control_loop(GymController(PointEnv(policy.obs_dim, policy.act_dim), seed=0),
                              policy, 200.0, 60,
                              on_episode_end=lambda i, ret: futures.append(policy.adapt_async()))
    assert report.steps == 60 and len(report.episode_returns) == 6 and len(futures) == 6
    assert report.wall_time >= 60 / 200 * 0.95
    assert 0 <= report.missed_deadlines <= 60  # counted; zero is the benchmark's claim
    reports = [f.result(timeout=60) for f in futures]
    assert sum(r.accepted for r in reports) >= 3
    assert not np.array_equal(policy.params, policy.bundle.params)
    policy.close()


# ---------------------------------------------------------------- CLI
def test_cli_adapt_prints_a_table(bundle, capsys):
    code = cli_main(["adapt", "--bundle", str(bundle[2]), "--env", "sim_envs/Reach-v0",
                     "--split", "test", "--tasks", "2", "--episodes", "2", "--adapt-steps",
                     "2", "--seed", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert "return before" in out and "success after" in out
    rows = [line for line in out.splitlines() if line.startswith("reach-test-")]
    assert len(rows) == 2
    for row in rows:
        numbers = [float(x) for x in row.split()[1:5]]
        assert numbers[0] < 0 and 0 <= numbers[2] <= 1  # Reach returns are negative
    assert "mean" in out


def test_cli_rejects_bad_input(bundle, tmp_path, capsys):
    assert cli_main(["adapt", "--bundle", str(tmp_path)]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["adapt", "--bundle", str(bundle[2]), "--tasks", "0"])
    assert exit_info.value.code == 2
    assert "positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--env", "sim_envs/Nope-v0"], "cannot make env 'sim_envs/Nope-v0'"),
    (["--env", "NoNamespaceAtAll-v3"], "cannot make env"),
    (["--env", "sim_envs/Grasp-v0"], "simulates family 'grasp', the bundle is for 'reach'"),
    (["--env", "CartPole-v1"], "not a metarobot task family"),
])
def test_cli_user_errors_are_one_line_and_exit_2(bundle, capsys, args, message):
    """Issue 19, item 9: no gymnasium traceback for a bad --env."""
    code = cli_main(["adapt", "--bundle", str(bundle[2]), "--tasks", "1", "--episodes", "1",
                     *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("metarobot-deploy adapt: error:")


def test_cli_bad_bundle_and_bad_numbers_exit_2(bundle, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(bundle[2], broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["metadata"]["normalizer"] = [1, 2, 3]  # issue 19: an AttributeError before
    (broken / "manifest.json").write_text(json.dumps(manifest))
    assert cli_main(["adapt", "--bundle", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "normalizer' must be a JSON object" in err and len(err.strip().splitlines()) == 1
    for flag, value in (("--seed", "-1"), ("--max-kl", "nan"), ("--worse-margin", "-1"),
                        ("--trial-episodes", "x")):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["adapt", "--bundle", str(bundle[2]), flag, value])
        assert exit_info.value.code == 2, flag
        assert flag in capsys.readouterr().err


def test_bundle_records_env_options_and_the_cli_simulates_with_them(bundle, tmp_path, capsys):
    # The gait generator adds the gait phase to Walk's observation (45 + 2 values): the
    # CLI can only run this bundle in the simulator if it builds the env the same way.
    env = gymnasium.make("sim_envs/Walk-v0", gait_generator=True)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    model = GaussianMLPPolicy(obs_dim, act_dim, (16,), init_log_std=-1.0)
    out = export_bundle(model.eval(), model.init_params(), tmp_path / "walk", family="walk",
                        env_id="sim_envs/Walk-v0", observation_space=env.observation_space,
                        action_space=env.action_space,
                        inner_config={"loss": "lvc", "lr": LR, "clip": CLIP, "steps": 1,
                                      "gamma": GAMMA, "lam": LAM, "baseline": "linear_feature"},
                        adapt_steps_options=(1,), env_kwargs={"gait_generator": True})
    env.close()
    assert obs_dim == 47
    assert load_bundle(out).env_kwargs == {"gait_generator": True}
    assert load_bundle(bundle[2]).env_kwargs == {}  # exported without options
    code = cli_main(["adapt", "--bundle", str(out), "--split", "test", "--tasks", "1",
                     "--episodes", "1", "--seed", "0"])
    assert code == 0, capsys.readouterr().err
    assert any(line.startswith("walk-test-") for line in capsys.readouterr().out.splitlines())


def test_cli_adapt_runs_a_memory_bundle(tmp_path, capsys, monkeypatch):
    """A memory (RL2) bundle, as ``metarobot evaluate`` runs RL2: per task the hidden
    state starts empty (reset between tasks) and is carried across its (K + 1) x E
    episodes; "before" is the first block of E episodes, "after" the last. A spy on the
    runtime sees each step's state and episode-end flag and each episode's return."""
    from test_rl2 import _export_random_gru

    from deploy.recurrent import RecurrentPolicy

    _, _, path = _export_random_gru(tmp_path, hidden=(8,))
    episodes: list[list[tuple[bool, bool]]] = [[]]  # per step: (state all 0, prev_done)
    returns: list[float] = [0.0]
    runtimes: list[RecurrentPolicy] = []
    act, observe = RecurrentPolicy.act, RecurrentPolicy.observe

    def spy_act(self, obs, deterministic=False):
        runtimes.append(self)
        episodes[-1].append((not self.state.any(), bool(self._prev_done[0])))
        return act(self, obs, deterministic)

    def spy_observe(self, obs, action, reward, terminated, truncated):
        returns[-1] += reward
        observe(self, obs, action, reward, terminated, truncated)
        if terminated or truncated:
            episodes.append([])
            returns.append(0.0)

    monkeypatch.setattr(RecurrentPolicy, "act", spy_act)
    monkeypatch.setattr(RecurrentPolicy, "observe", spy_observe)
    tasks, e, k = 2, 2, 2
    code = cli_main(["adapt", "--bundle", str(path), "--tasks", str(tasks), "--episodes",
                     str(e), "--adapt-steps", str(k), "--seed", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert "return before" in out and "2 step(s) of memory" in out
    episodes, returns = episodes[:-1], returns[:-1]  # the empty one after the last end
    per_task = (k + 1) * e
    assert len(episodes) == tasks * per_task and len({id(r) for r in runtimes}) == 1
    for j, steps in enumerate(episodes):
        first = j % per_task == 0  # a task's first episode: an empty memory, else carried
        assert steps[0] == (first, not first), j
        assert not any(zero or done for zero, done in steps[1:]), j
    rows = [line for line in out.splitlines() if line.startswith("reach-test-")]
    assert len(rows) == tasks
    for i, row in enumerate(rows):
        before, after = (float(x) for x in row.split()[1:3])
        task = returns[i * per_task:(i + 1) * per_task]
        assert before == pytest.approx(np.mean(task[:e]), abs=0.006)
        assert after == pytest.approx(np.mean(task[k * e:]), abs=0.006)
        assert row.endswith("memory of 4 episode(s)")  # no state reset after a fault
    assert runtimes[0].state_resets == 0
    # The gradient step's flags have nothing to set in a memory bundle.
    assert cli_main(["adapt", "--bundle", str(path), "--max-kl", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "--max-kl" in err and "memory" in err and len(err.strip().splitlines()) == 1
