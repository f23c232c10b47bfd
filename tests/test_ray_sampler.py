"""The sampler's ray backend: the local backend's worker code as Ray actors.

A local Ray instance of 2 CPUs is started once for the tests that share it and shut down
at the end of the module. The point-mass env of ``test_sampler`` (imported under the name
pytest gives it, so that its task classes are the ones its env checks) is imported by the
actors too: ``tests/`` goes on the ``PYTHONPATH`` of the Ray instances started here.
Ray is a dependency of CI (the README's install line installs the ``ray`` extra): without
it these tests fail, they are not skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import ray
import torch
import yaml
from test_sampler import (
    MAX_STEPS,
    POINT_ID,
    assert_batches_equal,
    gen,
    point_task,
    stacked,
)

from metarobot.cli import main as cli_main
from metarobot.core.policy import GaussianMLPPolicy
from metarobot.sampling.ray_workers import INSTALL_RAY_EXTRA, RayWorker
from metarobot.sampling.sampler import MultiTaskSampler, _SampleCall
from metarobot.sampling.workers import WorkerFailed
from metarobot.training.config import config_from_dict
from metarobot.training.runlog import read_log

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def shutdown_ray_after_the_module():
    yield
    ray.shutdown()


@pytest.fixture
def actors_import_tests(monkeypatch):
    """A Ray instance started while this is set runs its workers with ``tests/`` on the
    ``PYTHONPATH`` (they inherit the environment), so they can import ``test_sampler``."""
    path = [str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in path if p))


@pytest.fixture
def ray_running(actors_import_tests):
    """A local Ray instance this process is connected to (started once, kept)."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False)
    yield


def actor_alive(worker: RayWorker) -> bool:
    """The actor answers a call (an error raised inside it, e.g. ``describe`` after its envs
    were closed, is an answer too)."""
    try:
        ray.get(worker.actor.describe.remote(), timeout=30)
        return True
    except ray.exceptions.RayActorError:
        return False
    except ray.exceptions.RayTaskError:
        return True


def actor_dies_within(worker: RayWorker, seconds: float) -> bool:
    """``ray.kill`` returns before the actor is gone: poll until it stops answering."""
    deadline = time.monotonic() + seconds
    while actor_alive(worker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# ---------------------------------------------------------------- same seed, same rollouts
def test_ray_backend_gives_the_local_samplers_episodes(ray_running):
    # Episodes that terminate at different steps make slots start jobs mid-call; 3 envs
    # per actor: pipeline groups of 1 and 2 envs, two calls in flight per actor.
    model = GaussianMLPPolicy(2, 2, hidden=(16,))
    params = stacked(model, 3, scale=0.3)
    tasks = [point_task(0.5, end_step=7), point_task(-0.5), point_task(1.0, end_step=3)]
    with MultiTaskSampler(POINT_ID, 2, 3) as local:
        reference = local.sample(model, params, tasks, 5, seed=11, generator=gen(4))
    with MultiTaskSampler(POINT_ID, 2, 3, backend="ray") as sampler:
        workers = list(sampler._workers)
        assert all(isinstance(w, RayWorker) for w in workers)
        assert len(set(sampler.worker_pids)) == 2 and os.getpid() not in sampler.worker_pids
        first = sampler.sample(model, params, tasks, 5, seed=11, generator=gen(4))
        again = sampler.sample(model, params, tasks, 5, seed=11, generator=gen(4))
        other = sampler.sample(model, params, tasks, 5, seed=12, generator=gen(4))
    assert_batches_equal(first, reference)  # bit-identical: same layout, same schedule
    assert_batches_equal(again, reference)
    assert not torch.equal(other.obs[:, :, 0], first.obs[:, :, 0])
    assert torch.equal(first.mask.sum(-1)[2], torch.full((5,), 3.0))
    # close() ended the actors but left the Ray instance it did not start.
    assert ray.is_initialized()
    assert not any(actor_alive(w) for w in workers)


def test_ray_backend_on_reach_matches_the_local_sampler(ray_running):
    env = gymnasium.make("sim_envs/Reach-v0")
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    tasks = env.unwrapped.sample_tasks(2, "train", seed=0)
    env.close()
    model = GaussianMLPPolicy(obs_dim, act_dim, hidden=(16,))
    params = stacked(model, 2, scale=0.1)
    batches = []
    for backend in ("local", "ray"):
        with MultiTaskSampler("sim_envs/Reach-v0", 2, 2, backend=backend) as sampler:
            batches.append(sampler.sample(model, params, tasks, 2, seed=3, generator=gen(1)))
    assert batches[1].obs.shape == (2, 2, 50, obs_dim)
    assert bool(batches[1].mask.all())
    assert_batches_equal(batches[1], batches[0])


def test_ray_worker_handle_keeps_calls_in_order_and_reports_failures(ray_running):
    worker = RayWorker(POINT_ID, {}, 2, "test")
    try:
        assert worker.describe(60.0)["pid"] == worker.pid != os.getpid()
        first = worker.send("raw_steps", 3, 0)
        second = worker.send("describe")
        # Asked in the other order, both replies are there (two calls in flight).
        assert worker.recv(second, 60.0)["act_shape"] == (2,)
        assert worker.recv(first, 60.0)[0] == 6
        worker.send("raw_steps", 1, 0)
        worker.forget()
        assert worker.recv(worker.send("raw_steps", 2, 0), 60.0)[0] == 4
        # A command that raises in the actor (task 5 of no tasks): the actor lives on.
        bad = worker.send("step", np.zeros((1, 2), np.float32), np.zeros(1, bool), [(5, 0)])
        with pytest.raises(WorkerFailed, match="IndexError"):
            worker.recv(bad, 60.0)
        assert actor_alive(worker)
    finally:
        worker.close()
    assert actor_dies_within(worker, 30.0)
    with pytest.raises(ValueError, match="cannot create 'sim_envs/NoSuchEnv-v0'"):
        MultiTaskSampler("sim_envs/NoSuchEnv-v0", 1, 1, backend="ray")


# ---------------------------------------------------------------- fault tolerance
def test_killed_crashed_and_hung_actors_are_replaced_and_the_batch_is_undisturbed(
        ray_running, tmp_path, monkeypatch):
    model = GaussianMLPPolicy(2, 2, hidden=(16,))
    params = stacked(model, 2, scale=0.3)
    tasks = [point_task(0.5, end_step=9), point_task(-0.5)]
    # Three faults in one call: an actor killed from outside (ray.kill, as when its node
    # goes), an env that SIGKILLs its own actor process at its third step, one that hangs
    # at its sixth step (step_timeout).
    kwargs = {"crash_file": str(tmp_path / "crash"), "hang_file": str(tmp_path / "hang")}
    policy_calls = 0
    act = _SampleCall.act

    def act_and_kill_actor_0(call: _SampleCall, running):
        nonlocal policy_calls
        policy_calls += 1
        if policy_calls == 5:  # mid-call: both of actor 0's groups have episodes running
            worker = call.sampler._workers[0]
            ray.kill(worker.actor, no_restart=False)
            # ray.kill returns at once; wait for the death, so that no env of actor 0 takes
            # its third step (and claims the crash below) before it dies.
            while actor_alive(worker):
                time.sleep(0.05)
        act(call, running)

    messages: list[str] = []
    with MultiTaskSampler(POINT_ID, 2, 2, env_kwargs=kwargs, logger=messages.append,
                          step_timeout=3.0, backend="ray") as sampler:
        first_actors = list(sampler._workers)
        monkeypatch.setattr(_SampleCall, "act", act_and_kill_actor_0)
        batch = sampler.sample(model, params, tasks, 3, seed=2, generator=gen(5))
        monkeypatch.setattr(_SampleCall, "act", act)
        died = [e for e in sampler.events if e["event"] == "worker_died"]
        restarted = [e for e in sampler.events if e["event"] == "worker_restarted"]
        assert len(died) == len(restarted) == 3 and len(messages) == 6
        assert sum("actor died" in e["reason"] for e in died) == 2
        assert sum("no reply within 3.0 s" in e["reason"] for e in died) == 1
        assert died[0]["worker"] == 0 and all(e["episodes"] for e in died)
        assert sampler.last_stats["restarts"] == 3
        assert not any(w in first_actors for w in sampler._workers)
        # Both files exist now and the hook is gone: an undisturbed call.
        undisturbed = sampler.sample(model, params, tasks, 3, seed=2, generator=gen(5))
        assert len(sampler.events) == 6
    assert torch.equal(batch.mask.sum(-1), torch.tensor([[9.0] * 3, [float(MAX_STEPS)] * 3]))
    assert_batches_equal(batch, undisturbed)


# ---------------------------------------------------------------- Ray instance, config, CLI
def test_ray_backend_config_keys_are_validated():
    assert config_from_dict({}).sampler.backend == "local"
    cfg = config_from_dict({"sampler": {"backend": "ray", "ray_address": "auto"}})
    assert (cfg.sampler.backend, cfg.sampler.ray_address) == ("ray", "auto")
    with pytest.raises(ValueError, match=r"sampler.backend = 'dask'.*\['local', 'ray'\]"):
        config_from_dict({"sampler": {"backend": "dask"}})
    with pytest.raises(ValueError, match="sampler.backend = 'ray'.*num_workers >= 1"):
        config_from_dict({"sampler": {"backend": "ray", "num_workers": 0}})
    with pytest.raises(ValueError, match="sampler.ray_address = 'auto'.*backend is 'ray'"):
        config_from_dict({"sampler": {"ray_address": "auto"}})
    with pytest.raises(ValueError, match="backend must be one of"):
        MultiTaskSampler(POINT_ID, 1, 1, backend="dask")
    with pytest.raises(ValueError, match="num_workers >= 1"):
        MultiTaskSampler(POINT_ID, 0, 1, backend="ray")


def test_train_with_ray_address_runs_its_workers_as_actors(ray_running, tmp_path,
                                                           monkeypatch):
    # Ray is initialised in this process, so the address is not dialled: the sampler
    # uses the running instance (as it would the cluster behind "auto").
    started: list[str] = []
    init = RayWorker.__init__

    def record_start(worker, env_id, *args):
        started.append(env_id)
        init(worker, env_id, *args)

    monkeypatch.setattr(RayWorker, "__init__", record_start)
    run = tmp_path / "run"
    code = cli_main(["train", "--config", "reach-cpu", "--ray-address", "auto",
                     "--iterations", "1", "--run-dir", str(run), "--no-progress",
                     "--set", "meta_batch.tasks=2", "--set", "meta_batch.episodes=2",
                     "--set", "sampler.num_workers=1", "--set", "sampler.envs_per_worker=2",
                     "--set", "outer.epochs=1", "--device", "cpu"])
    assert code == 0
    assert started == ["sim_envs/Reach-v0"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["sampler"] == {"num_workers": 1, "envs_per_worker": 2, "backend": "ray",
                                "ray_address": "auto"}
    (record,) = read_log(run).values()
    # tasks x episodes x at most 50 steps, pre- and post-update
    assert 0 < record["env_steps"] <= 2 * 2 * 50 * 2
    assert ray.is_initialized()


def test_without_ray_the_sampler_imports_and_the_ray_backend_names_the_extra(tmp_path):
    # A fresh interpreter where `import ray` fails: the sampler and the trainer import,
    # the local backend works, and asking for the ray backend is a one-line error (exit
    # status 2 from the CLI) before anything is written.
    run = tmp_path / "run"
    code = (
        "import sys\nsys.modules['ray'] = None\n"
        "from metarobot.sampling.sampler import MultiTaskSampler\n"
        "import metarobot.training.trainer\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_sampler import POINT_ID\n"
        "with MultiTaskSampler(POINT_ID, 0, 1) as s: print('local ok', s.family)\n"
        "try:\n"
        "    MultiTaskSampler(POINT_ID, 1, 1, backend='ray')\n"
        "except ValueError as err: print('sampler:', err)\n"
        "from metarobot.cli import main\n"
        f"sys.exit(main(['train', '--config', 'reach-cpu', '--ray-address', 'auto', "
        f"'--run-dir', {str(run)!r}]))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    message = f"sampler.backend 'ray' needs Ray (ray is not installed): {INSTALL_RAY_EXTRA}"
    assert result.returncode == 2, result.stderr
    assert result.stdout.splitlines() == ["local ok point", f"sampler: {message}"]
    assert result.stderr.splitlines()[-1] == f"metarobot train: error: {message}"
    assert not run.exists()


def test_the_message_names_the_ray_extra_of_pyproject():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^ray = \["ray>=[0-9.]+"\]$', pyproject, re.MULTILINE)
    assert INSTALL_RAY_EXTRA == "pip install 'metarobot[ray]'"


def test_without_an_instance_the_sampler_starts_a_local_one_and_stops_it(actors_import_tests):
    ray.shutdown()  # the instance the other tests shared
    model = GaussianMLPPolicy(2, 2, hidden=(8,))
    with MultiTaskSampler(POINT_ID, 1, 2, backend="ray") as sampler:
        assert ray.is_initialized()
        assert ray.cluster_resources()["CPU"] == 1.0  # one per worker
        batch = sampler.sample(model, stacked(model, 1), [point_task(0.2)], 2, seed=0,
                               generator=gen())
    assert not ray.is_initialized()
    assert batch.mask.sum() == 2 * MAX_STEPS
