"""Tests of metarobot.sampling.sampler on a tiny point-mass MetaEnv (defined and registered here so
spawned workers can import it) and one smoke run on Reach."""

from __future__ import annotations

import gc
import math
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces

from metarobot.core.policy import (
    GaussianMLPPolicy,
    gaussian_log_prob,
    policy_forward,
    rows_policy_forward,
)
from metarobot.sampling.sampler import MultiTaskSampler, reset_seed
from metarobot.sampling.workers import LocalWorker, ProcessWorker
from sim_envs.base_env import MetaEnv
from sim_envs.tasks import ParamSpec, Split, Task, TaskFamily, TaskParams, param

# ---------------------------------------------------------------- the point-mass family
MAX_STEPS = 12
STEP_SIZE = 0.1


@dataclass(frozen=True)
class PointParams(TaskParams):
    goal: float = param(ParamSpec(unit="m", low=-2.0, high=2.0, doc="goal x"))
    end_step: int = param(ParamSpec(low=0, high=1000, doc="terminate (success) at this "
                                                          "step; 0: never"))


class PointFamily(TaskFamily):
    name = "point"
    params_type = PointParams

    def _sample_params(self, rng: np.random.Generator, split: Split) -> TaskParams:
        return PointParams(goal=float(rng.uniform(-1, 1)), end_step=0)

    def split_of(self, params: TaskParams) -> Split:
        return "train"


class PointEnv(MetaEnv):
    """x, y position moved by ``STEP_SIZE * action``; reward ``-|pos - (goal, 0)|``.

    ``crash_file`` / ``hang_file``: the first env (across processes) to reach step
    ``crash_step`` / ``hang_step`` while the file does not exist creates it and SIGKILLs
    its own process (after ``crash_delay`` seconds) / sleeps for a minute: exactly one
    worker death each. ``crash_episode``: crash only in that episode (0: the first) since
    the env's last task switch, i.e. that episode of an RL2 trial (None: any episode).
    """

    family_type = PointFamily

    def __init__(self, task: Task | None = None, render_mode: str | None = None,
                 crash_file: str | None = None, crash_step: int = 3, crash_delay: float = 0.0,
                 crash_episode: int | None = None, hang_file: str | None = None,
                 hang_step: int = 6) -> None:
        self.crash_file, self.crash_step, self.crash_delay = crash_file, crash_step, crash_delay
        self.crash_episode = crash_episode
        self.episodes_of_task = 0  # resets since the last task switch
        self.hang_file, self.hang_step = hang_file, hang_step
        self.apply_count = 0
        super().__init__(task, render_mode)

    def _build_scene(self) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.pos = np.zeros(2)
        self.t = 0

    def _apply_task(self, task: Task) -> None:
        self.goal, self.end_step = task.params.goal, task.params.end_step
        self.apply_count += 1
        self.episodes_of_task = 0

    def _reset_episode(self) -> None:
        self.pos = self.np_random.uniform(-1.0, 1.0, 2)
        self.t = 0
        self.episodes_of_task += 1

    def _observe(self) -> np.ndarray:
        return self.pos.astype(np.float32)

    def _step(self, action: np.ndarray) -> tuple[float, bool, bool, dict[str, Any]]:
        self.t += 1
        if (self.t == self.crash_step and self.crash_episode in (None, self.episodes_of_task - 1)
                and _claim(self.crash_file)):
            time.sleep(self.crash_delay)
            os.kill(os.getpid(), signal.SIGKILL)
        if self.t == self.hang_step and _claim(self.hang_file):
            time.sleep(60.0)
        self.pos = self.pos + STEP_SIZE * action
        reward = -float(np.linalg.norm(self.pos - np.array([self.goal, 0.0])))
        terminated = self.end_step > 0 and self.t >= self.end_step
        return reward, terminated, terminated, {}


def _claim(path: str | None) -> bool:
    """True for exactly one caller per path (atomic create)."""
    if path is None:
        return False
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


if "PointGoal-v0" not in gymnasium.registry:
    gymnasium.register(id="PointGoal-v0", entry_point=f"{__name__}:PointEnv",
                       max_episode_steps=MAX_STEPS)
# The module prefix makes spawned workers import this file (and so register the id).
POINT_ID = f"{__name__}:PointGoal-v0"


def point_task(goal: float, end_step: int = 0) -> Task:
    return PointFamily().make_task({"goal": goal, "end_step": end_step})


def stacked(model: GaussianMLPPolicy, num_tasks: int, seed: int = 0,
            scale: float = 0.0) -> dict[str, torch.Tensor]:
    """Model params broadcast to ``num_tasks``, each task perturbed by its own noise."""
    g = torch.Generator().manual_seed(seed)
    return {k: v.detach().expand(num_tasks, *v.shape)
            + scale * torch.randn(num_tasks, *v.shape, generator=g)
            for k, v in model.named_parameters()}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_batches_equal(a, b) -> None:
    assert a.tensors().keys() == b.tensors().keys()
    for name, x in a.tensors().items():
        assert torch.equal(x, b.tensors()[name]), f"{name} differs"


@pytest.fixture(autouse=True)
def no_leftover_workers():
    yield
    # A test that fails midway must not leave workers behind for the others.
    leftover = multiprocessing.active_children()
    for child in leftover:
        child.kill()
        child.join()
    assert not leftover, f"worker processes left running: {leftover}"


# ---------------------------------------------------------------- tests
def test_shapes_masks_padding_and_success():
    model = GaussianMLPPolicy(2, 2, hidden=(16,))
    tasks = [point_task(0.5, end_step=5), point_task(-0.5)]  # terminates at 5 / truncated
    with MultiTaskSampler(POINT_ID, 0, 4) as sampler:
        batch = sampler.sample(model, stacked(model, 2), tasks, 3, seed=1, generator=gen())
    M, E, T = 2, 3, MAX_STEPS
    assert batch.obs.shape == (M, E, T, 2) and batch.act.shape == (M, E, T, 2)
    for name in ("rew", "mask", "logp"):
        assert getattr(batch, name).shape == (M, E, T)
    assert batch.success.shape == (M, E)
    lengths = batch.mask.sum(-1)
    assert torch.equal(lengths, torch.tensor([[5.0] * E, [float(T)] * E]))
    # mask is 1 up to the episode end, then 0, and padded steps hold zeros.
    assert torch.equal(batch.mask, (torch.arange(T) < lengths[..., None]).float())
    pad = batch.mask == 0
    for x in (batch.obs.abs().sum(-1), batch.act.abs().sum(-1), batch.rew, batch.logp):
        assert torch.all(x[pad] == 0)
        assert torch.all(torch.isfinite(x))
    assert torch.equal(batch.success, torch.tensor([[1.0] * E, [0.0] * E]))
    # obs[t] is the observation the action act[t] was taken in, rew[t] its reward.
    real = batch.mask[..., 1:] == 1
    moved = batch.obs[..., :-1, :] + STEP_SIZE * batch.act[..., :-1, :].clamp(-1, 1)
    assert torch.allclose(batch.obs[..., 1:, :][real], moved[real], atol=1e-5)
    goals = torch.tensor([0.5, -0.5])[:, None, None]
    dist = torch.stack([batch.obs[..., 1:, 0] - goals, batch.obs[..., 1:, 1]], -1).norm(dim=-1)
    assert torch.allclose(batch.rew[..., :-1][real], -dist[real], atol=1e-5)
    # Episodes of one task start from different reset seeds.
    assert not torch.equal(batch.obs[0, 0, 0], batch.obs[0, 1, 0])


def test_reset_obs_follows_the_derived_seed():
    task = point_task(0.3)
    model = GaussianMLPPolicy(2, 2, hidden=(8,))
    with MultiTaskSampler(POINT_ID, 0, 2) as sampler:
        batch = sampler.sample(model, stacked(model, 1), [task], 2, seed=7, generator=gen())
    env = gymnasium.make(POINT_ID)
    env.unwrapped.set_task(task)
    obs, _ = env.reset(seed=reset_seed(7, 0, 1))
    env.close()
    assert torch.equal(batch.obs[0, 1, 0], torch.from_numpy(obs))


def test_logp_is_log_prob_of_act_under_each_tasks_params():
    torch.manual_seed(0)
    model = GaussianMLPPolicy(2, 2, hidden=(16, 16), init_log_std=-0.5)
    params = stacked(model, 3, scale=0.5)
    tasks = [point_task(g) for g in (-1.0, 0.0, 1.0)]
    with MultiTaskSampler(POINT_ID, 0, 5) as sampler:
        batch = sampler.sample(model, params, tasks, 2, seed=0, generator=gen(3))
    real = batch.mask == 1
    for m in range(3):
        mean, log_std = policy_forward(model, {k: v[m] for k, v in params.items()}, batch.obs[m])
        expected = gaussian_log_prob(mean, log_std, batch.act[m])
        assert torch.allclose(batch.logp[m][real[m]], expected[real[m]], atol=1e-5)
        # Actions are sampled, not the mean.
        assert (batch.act[m] - mean)[real[m]].abs().max() > 0.05
    # Shared (pre-update) parameters take the single-call path: same check.
    with MultiTaskSampler(POINT_ID, 0, 5) as sampler:
        batch = sampler.sample(model, stacked(model, 3), tasks, 2, seed=0, generator=gen(3))
    mean, log_std = model(batch.obs)
    assert torch.allclose(batch.logp, gaussian_log_prob(mean, log_std, batch.act) * batch.mask,
                          atol=1e-5)


def test_rows_policy_forward_matches_functional_call_and_vmap():
    torch.manual_seed(0)
    model = GaussianMLPPolicy(3, 2, hidden=(16, 8), init_log_std=-0.5)
    model.set_normalizer(torch.randn(3), torch.rand(3) + 0.5)
    params = stacked(model, 4, scale=0.5)
    obs = 3 * torch.randn(9, 3)
    index = torch.tensor([3, 0, 0, 2, 1, 3, 2, 0, 1])
    shared = {k: v[1] for k, v in params.items()}
    for x, y in zip(rows_policy_forward(model, shared, obs), policy_forward(model, shared, obs)):
        assert torch.equal(x, y)
    per_row = torch.func.vmap(lambda p, o: policy_forward(model, p, o))
    expected = per_row({k: v[index] for k, v in params.items()}, obs)
    for x, y in zip(rows_policy_forward(model, params, obs, index), expected):
        assert torch.equal(x, y)
    # A row's result does not depend on the other rows of the batch.
    alone = rows_policy_forward(model, params, obs[4:5], index[4:5])
    assert torch.equal(alone[0][0], expected[0][4])


def test_per_task_params_drive_the_actions():
    model = GaussianMLPPolicy(2, 2, hidden=(8,))
    params = stacked(model, 2)
    params["mean_net.2.weight"] = torch.zeros_like(params["mean_net.2.weight"])
    params["mean_net.2.bias"] = torch.tensor([[0.7, 0.0], [-0.7, 0.0]])
    tasks = [point_task(0.0), point_task(0.0)]
    with MultiTaskSampler(POINT_ID, 0, 3) as sampler:
        batch = sampler.sample(model, params, tasks, 2, seed=0, generator=gen(),
                               deterministic=True)
    real = batch.mask == 1
    assert torch.all(batch.act[0, ..., 0][real[0]] == 0.7)
    assert torch.all(batch.act[1, ..., 0][real[1]] == -0.7)
    drift = batch.obs[:, :, -1, 0] - batch.obs[:, :, 0, 0]
    assert torch.all(drift[0] > 0.5) and torch.all(drift[1] < -0.5)


def test_set_task_only_when_the_task_changes():
    model = GaussianMLPPolicy(2, 2, hidden=(8,))
    tasks = [point_task(0.1), point_task(0.2)]
    with MultiTaskSampler(POINT_ID, 0, 2) as sampler:
        envs = [env.unwrapped for env in sampler._workers[0].group.envs]

        def switches_during(call_tasks: list[Task]) -> int:
            before = sum(env.apply_count for env in envs)
            batch = sampler.sample(model, stacked(model, 2), call_tasks, 3, seed=0,
                                   generator=gen())
            assert torch.all(batch.mask.sum(-1) == MAX_STEPS)  # every episode ran
            return sum(env.apply_count for env in envs) - before

        # Each slot takes one task and keeps it for its 3 episodes: one switch per slot.
        assert switches_during(tasks) == 2
        # The same call again gives each slot the task its env still simulates: no switch.
        assert switches_during(tasks) == 0
        assert switches_during(tasks[::-1]) == 2


def test_same_seed_and_generator_give_the_same_batch_in_process():
    model = GaussianMLPPolicy(2, 2, hidden=(16,))
    params = stacked(model, 2, scale=0.3)
    tasks = [point_task(0.5, end_step=7), point_task(-0.5)]
    with MultiTaskSampler(POINT_ID, 0, 3) as sampler:
        first = sampler.sample(model, params, tasks, 4, seed=5, generator=gen(1))
        again = sampler.sample(model, params, tasks, 4, seed=5, generator=gen(1))
        other_seed = sampler.sample(model, params, tasks, 4, seed=6, generator=gen(1))
        other_noise = sampler.sample(model, params, tasks, 4, seed=5, generator=gen(2))
    assert_batches_equal(first, again)
    # Nor does the sampler's history matter (exact resume from a fresh sampler), also with
    # shared parameters, whose plain matmul rounding depends on the batch layout.
    shared = stacked(model, 2)
    with MultiTaskSampler(POINT_ID, 0, 3) as used, MultiTaskSampler(POINT_ID, 0, 3) as fresh:
        used.sample(model, stacked(model, 1, scale=0.2), [tasks[1]], 5,
                    seed=0, generator=gen())
        assert_batches_equal(used.sample(model, shared, tasks, 4, seed=5, generator=gen(1)),
                             fresh.sample(model, shared, tasks, 4, seed=5, generator=gen(1)))
    assert not torch.equal(first.obs[:, :, 0], other_seed.obs[:, :, 0])
    assert torch.equal(first.obs[:, :, 0], other_noise.obs[:, :, 0])  # same resets
    assert not torch.equal(first.act, other_noise.act)


def test_workers_are_deterministic_match_in_process_and_clean_up():
    model = GaussianMLPPolicy(2, 2, hidden=(16,))
    params = stacked(model, 3, scale=0.3)
    tasks = [point_task(0.5, end_step=7), point_task(-0.5), point_task(1.0, end_step=3)]
    with MultiTaskSampler(POINT_ID, 0, 4) as local:
        reference = local.sample(model, params, tasks, 5, seed=11, generator=gen(4))
    with MultiTaskSampler(POINT_ID, 2, 3) as sampler:
        pids = sampler.worker_pids
        assert len(pids) == 2 and len(multiprocessing.active_children()) == 2
        first = sampler.sample(model, params, tasks, 5, seed=11, generator=gen(4))
        again = sampler.sample(model, params, tasks, 5, seed=11, generator=gen(4))
    assert_batches_equal(first, again)
    # Same reset seeds and noise per (task, episode, step) whatever the slot layout.
    for name, x in first.tensors().items():
        assert torch.allclose(x, reference.tensors()[name], atol=1e-5), name
    assert multiprocessing.active_children() == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(ValueError, match="closed"):
        sampler.sample(model, params, tasks, 1, seed=0, generator=gen())
    sampler.close()  # idempotent


def test_unclosed_sampler_stops_its_workers_when_collected():
    sampler = MultiTaskSampler(POINT_ID, 1, 1)
    (pid,) = sampler.worker_pids
    assert [child.pid for child in multiprocessing.active_children()] == [pid]
    del sampler
    gc.collect()
    assert multiprocessing.active_children() == []


def test_dead_and_hung_workers_are_replaced_and_the_batch_is_complete(tmp_path):
    model = GaussianMLPPolicy(2, 2, hidden=(16,))
    params = stacked(model, 2, scale=0.3)
    tasks = [point_task(0.5, end_step=9), point_task(-0.5)]
    messages: list[str] = []
    kwargs = {"crash_file": str(tmp_path / "crash"), "hang_file": str(tmp_path / "hang")}
    with MultiTaskSampler(POINT_ID, 2, 2, env_kwargs=kwargs, logger=messages.append,
                          step_timeout=3.0) as sampler:
        old_pids = set(sampler.worker_pids)
        batch = sampler.sample(model, params, tasks, 3, seed=2, generator=gen(5))
        kinds = [event["event"] for event in sampler.events]
        assert kinds == ["worker_died", "worker_restarted"] * 2
        died = [event for event in sampler.events if event["event"] == "worker_died"]
        assert died[0]["exitcode"] == -signal.SIGKILL
        assert "no reply within" in died[1]["reason"]
        assert all(event["episodes"] for event in died)
        assert len(messages) == 4 and "died" in messages[0]
        assert {event["pid"] for event in died} <= old_pids
        assert len(set(sampler.worker_pids) - old_pids) >= 1
        # Both files exist now, so this call runs undisturbed.
        undisturbed = sampler.sample(model, params, tasks, 3, seed=2, generator=gen(5))
        assert len(sampler.events) == 4
    assert torch.equal(batch.mask.sum(-1), torch.tensor([[9.0] * 3, [float(MAX_STEPS)] * 3]))
    assert all(torch.all(torch.isfinite(x)) for x in batch.tensors().values())
    # The re-run episodes reproduce exactly what an undisturbed run samples.
    assert_batches_equal(batch, undisturbed)


def test_pipelined_halves_match_unpipelined_layouts():
    # 2 workers x 5 envs: groups of 2 and 3 envs per worker, two messages in flight per
    # worker; episodes that terminate at different steps make slots start jobs mid-call.
    model = GaussianMLPPolicy(2, 2, hidden=(16,))
    params = stacked(model, 3, scale=0.3)
    tasks = [point_task(0.5, end_step=7), point_task(-0.5), point_task(1.0, end_step=3)]
    batches = {}
    for layout in [(2, 5), (0, 4), (0, 1), (1, 1)]:
        with MultiTaskSampler(POINT_ID, *layout) as sampler:
            batches[layout] = sampler.sample(model, params, tasks, 6, seed=3, generator=gen(2))
            if layout == (2, 5):
                assert_batches_equal(batches[layout], sampler.sample(
                    model, params, tasks, 6, seed=3, generator=gen(2)))
    pipelined = batches[(2, 5)]
    for layout, batch in batches.items():
        assert torch.equal(batch.mask, pipelined.mask), layout
        assert torch.equal(batch.success, pipelined.success), layout
        for name, x in batch.tensors().items():
            assert torch.allclose(x, pipelined.tensors()[name], atol=1e-6), (layout, name)


def test_worker_killed_with_both_halves_outstanding_gives_the_undisturbed_batch(tmp_path):
    model = GaussianMLPPolicy(2, 2, hidden=(16,))
    params = stacked(model, 2, scale=0.3)
    tasks = [point_task(0.5, end_step=9), point_task(-0.5)]
    # The dying env waits before the SIGKILL, so the main process has sent its worker the
    # other half's next step by then: both halves have a message outstanding.
    kwargs = {"crash_file": str(tmp_path / "crash"), "crash_step": 4, "crash_delay": 0.5}
    with MultiTaskSampler(POINT_ID, 2, 4, env_kwargs=kwargs, logger=lambda _: None,
                          step_timeout=10.0) as sampler:
        outstanding: list[int] = []
        replace = sampler._replace_worker

        def replace_and_record(index, *args):
            outstanding.append(len(sampler._workers[index]._waiting))
            replace(index, *args)

        sampler._replace_worker = replace_and_record
        batch = sampler.sample(model, params, tasks, 5, seed=4, generator=gen(6))
        assert outstanding == [2]
        died = sampler.events[0]
        assert died["event"] == "worker_died" and died["exitcode"] == -signal.SIGKILL
        # Every slot of the worker ran an episode (10 jobs, 8 slots): both halves' episodes
        # were re-queued.
        assert len(died["episodes"]) == 4
        undisturbed = sampler.sample(model, params, tasks, 5, seed=4, generator=gen(6))
        assert len(sampler.events) == 2
    assert_batches_equal(batch, undisturbed)


def test_worker_killed_mid_trial_gives_the_undisturbed_trials(tmp_path):
    """RL2 trial sampling (``sample_trials``) with a worker SIGKILLed in the second episode
    of a trial: the trials it cut short (their hidden state is gone) run again from
    episode 0 with the same seeds and noise, so the batch is an undisturbed call's:
    every task's E episodes, in order, the state carried across them (the recorded
    log-probabilities are those of the GRU re-run over each whole trial from a zero
    state), up to float rounding (the re-run trials share policy calls with other rows)."""
    from metarobot.algos import rl2
    from metarobot.core.recurrent import GaussianGRUPolicy, recurrent_sequence

    torch.manual_seed(1)
    model = GaussianGRUPolicy(2, 2, hidden=[16], init_log_std=-0.5)
    params = {k: v.detach().expand(3, *v.shape) for k, v in model.init_params().items()}
    tasks = [point_task(0.5, end_step=5), point_task(-0.5), point_task(0.2, end_step=3)]
    kwargs = {"crash_file": str(tmp_path / "crash"), "crash_step": 2, "crash_episode": 1}
    with MultiTaskSampler(POINT_ID, 2, 2, env_kwargs=kwargs, logger=lambda _: None,
                          step_timeout=10.0) as sampler:
        batch = sampler.sample_trials(model, params, tasks, 3, seed=3, generator=gen(0))
        assert [event["event"] for event in sampler.events] == ["worker_died",
                                                               "worker_restarted"]
        died = sampler.events[0]
        assert died["exitcode"] == -signal.SIGKILL
        assert any(episode >= 1 for _, episode in died["episodes"])  # cut mid-trial
        undisturbed = sampler.sample_trials(model, params, tasks, 3, seed=3, generator=gen(0))
        assert len(sampler.events) == 2
    # Equal up to float rounding: the GRU step's float32 rounding depends on which rows
    # share its batch, and the re-run trials are batched with other rows.
    assert torch.equal(batch.mask, undisturbed.mask)
    assert torch.equal(batch.success, undisturbed.success)
    for name, x in batch.tensors().items():
        assert torch.allclose(x, undisturbed.tensors()[name], rtol=0, atol=1e-5), name
    lengths = torch.tensor([[5.0] * 3, [float(MAX_STEPS)] * 3, [3.0] * 3])
    assert torch.equal(batch.mask.sum(-1), lengths)
    trials = rl2.pack_trials(batch)
    mean, log_std, _ = recurrent_sequence(model, {k: v[0] for k, v in params.items()},
                                          trials.inputs, model.initial_state(3))
    logp = gaussian_log_prob(mean, log_std, trials.act) * trials.inputs.mask
    assert (logp - trials.logp).abs().max() < 1e-4


@pytest.mark.parametrize("kind", ["local", "process"])
def test_worker_handles_keep_two_calls_outstanding(kind):
    if kind == "local":
        worker = LocalWorker(POINT_ID, {}, 2)
    else:
        worker = ProcessWorker(multiprocessing.get_context("spawn"), POINT_ID, {}, 2, "test")
        worker.describe(60.0)
    try:
        first = worker.send("raw_steps", 3, 0)
        second = worker.send("describe")
        # Asked in the other order, the earlier reply is kept, not skipped as stale.
        assert worker.recv(second, 60.0)["act_shape"] == (2,)
        assert worker.recv(first, 60.0)[0] == 6
        given_up = worker.send("raw_steps", 1, 0)
        worker.forget()
        assert worker.recv(worker.send("raw_steps", 2, 0), 60.0)[0] == 4
        assert given_up not in getattr(worker, "_waiting", ())
    finally:
        worker.close()


def test_bad_input_raises_value_error():
    model = GaussianMLPPolicy(2, 2, hidden=(8,))
    tasks = [point_task(0.1), point_task(0.2)]
    with pytest.raises(ValueError, match="num_workers"):
        MultiTaskSampler(POINT_ID, -1, 2)
    with pytest.raises(ValueError, match="envs_per_worker"):
        MultiTaskSampler(POINT_ID, 0, 0)
    with pytest.raises(ValueError, match="cannot create"):
        MultiTaskSampler("sim_envs/NoSuchEnv-v0", 0, 1)
    with MultiTaskSampler(POINT_ID, 0, 2) as sampler:
        params = stacked(model, 2)
        with pytest.raises(ValueError, match="leading"):
            sampler.sample(model, stacked(model, 3), tasks, 1, seed=0, generator=gen())
        with pytest.raises(ValueError, match="episodes_per_task"):
            sampler.sample(model, params, tasks, 0, seed=0, generator=gen())
        alien = Task(family="reach", split="train", params=PointParams(goal=0.0, end_step=0))
        with pytest.raises(ValueError, match="family"):
            sampler.sample(model, params, [tasks[0], alien], 1, seed=0, generator=gen())
        with pytest.raises(ValueError, match="NaN"):
            broken = dict(params, log_std=torch.full_like(params["log_std"], float("nan")))
            sampler.sample(model, broken, tasks, 1, seed=0, generator=gen())
        with pytest.raises(ValueError, match="seed"):
            sampler.sample(model, params, tasks, 1, seed=-1, generator=gen())
        with pytest.raises(ValueError, match="obs/act"):
            wide = GaussianMLPPolicy(3, 2, hidden=(8,))
            sampler.sample(wide, stacked(wide, 2), tasks, 1, seed=0, generator=gen())


def test_reach_smoke():
    env = gymnasium.make("sim_envs/Reach-v0")
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    tasks = env.unwrapped.sample_tasks(2, "train", seed=0)
    env.close()
    model = GaussianMLPPolicy(obs_dim, act_dim, hidden=(16,))
    with MultiTaskSampler("sim_envs/Reach-v0", 0, 2) as sampler:
        batch = sampler.sample(model, stacked(model, 2), tasks, 1, seed=0, generator=gen())
    assert batch.obs.shape == (2, 1, sampler.max_episode_steps, obs_dim)
    assert sampler.max_episode_steps == 50
    assert all(torch.all(torch.isfinite(x)) for x in batch.tensors().values())
    assert torch.all(batch.mask[..., 0] == 1)
    assert math.isclose(sampler.last_stats["env_steps"], float(batch.mask.sum()))
