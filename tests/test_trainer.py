"""Trainer engineering: configs, checkpoints, resume, non-finite updates, signals, CLI."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from deploy.files import atomic_write_bytes
from metarobot import api
from metarobot.algos import maml
from metarobot.cli import main as cli_main
from metarobot.training.checkpoint import load_checkpoint
from metarobot.training.config import (
    apply_overrides,
    config_from_dict,
    load_config,
    shipped_config_names,
)
from metarobot.training.trainer import MetaTrainer, TrainingDiverged
from sim_envs import FAMILY_NAMES

TINY = ["meta_batch.tasks=2", "meta_batch.episodes=2", "sampler.num_workers=0",
        "sampler.envs_per_worker=4", "iterations=2", "checkpoint_every=1", "device=cpu"]


def tiny_config(*extra: str):
    return api.resolve_config("reach-cpu", overrides=TINY + list(extra))


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", shipped_config_names())
def test_shipped_configs_load(name):
    cfg = api.resolve_config(name)
    assert cfg.family in FAMILY_NAMES
    assert math.isinf(cfg.inner.clip)


def test_unknown_key_and_wrong_type_are_named():
    with pytest.raises(ValueError, match="inner.lrr"):
        config_from_dict({"inner": {"lrr": 0.1}})
    with pytest.raises(ValueError, match="meta_batch.tasks"):
        config_from_dict({"meta_batch": {"tasks": "many"}})
    with pytest.raises(ValueError, match="outer.clip"):
        config_from_dict({"outer": {"clip": 2.0}})
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["inner.lr"])
    with pytest.raises(ValueError, match="outer.eta"):
        config_from_dict({"outer": {"eta": 0.0}})  # adaptive eta could never leave 0
    assert config_from_dict({"outer": {"eta": 0.0, "adaptive_eta": False}}).outer.eta == 0.0


def test_a_balanced_meta_batch_trains_on_the_family_s_balanced_draw(tmp_path):
    with pytest.raises(ValueError, match="meta_batch.balance"):
        config_from_dict({"family": "walk", "meta_batch": {"balance": "azimuth"}})
    cfg = api.resolve_config("walk-cpu", overrides=TINY + [
        "meta_batch.tasks=4", "meta_batch.episodes=1", "iterations=1", "policy.hidden=[16]",
        "advantages.value_hidden=[16]", "meta_batch.balance=heading"])
    trainer = MetaTrainer(cfg, tmp_path, progress=False)
    trainer.train()
    trainer.close()
    record = np.load(tmp_path / "episodes" / "iter_00000.npz")
    expected = trainer.family.sample_balanced(4, "train", cfg.seed * 1_000_003, by="heading")
    assert list(record["task_ids"]) == [t.task_id for t in expected]
    assert sorted(t.params.heading for t in expected) == [0.0, 0.0, math.pi, math.pi]


def test_overrides_are_parsed_as_yaml():
    cfg = load_config(None, "reach", ["inner.lr=0.05", "policy.hidden=[32, 16]",
                                      "inner.first_order=true"])
    assert cfg.inner.lr == 0.05 and cfg.policy.hidden == [32, 16] and cfg.inner.first_order


def test_float_overrides_without_a_dot_are_numbers():
    # YAML 1.1 reads "1e-6" as a string; a user typing it means the number.
    cfg = load_config(None, "reach", ["inner.lr=1e-6", "outer.kl_target=2E-2", "inner.clip=inf"])
    assert cfg.inner.lr == 1e-6 and cfg.outer.kl_target == 0.02 and math.isinf(cfg.inner.clip)
    for bad in ("inner.lr=fast", "inner.lr=nan"):
        with pytest.raises(ValueError, match="inner.lr.*must be a number"):
            load_config(None, "reach", [bad])


# ----------------------------------------------------------------------------- checkpoints
def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_write_bytes(path, lambda f: f.write(b"good"))

    def crash(f):
        f.write(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write_bytes(path, crash)
    assert path.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left


def test_corrupt_and_incompatible_checkpoints_give_clear_errors(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(bad)
    torch.save({"format_version": 999}, bad)
    with pytest.raises(ValueError, match="not a metarobot checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(ValueError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_checkpoint_with_another_value_network_gives_a_clear_error(tmp_path):
    saved = MetaTrainer(tiny_config("advantages.baseline=mlp"), tmp_path / "a", progress=False)
    state = saved.state_dict()
    saved.close()
    other = MetaTrainer(tiny_config("advantages.baseline=mlp",
                                    "advantages.value_task_features=false"),
                        tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="value_task_features"):
        other.load_state_dict(state)
    other.close()


@pytest.mark.parametrize("options", [[], ["advantages.baseline=mlp"]])
def test_resume_matches_an_uninterrupted_run(tmp_path, options):
    straight = MetaTrainer(tiny_config(*options), tmp_path / "a", progress=False)
    straight.train()
    first = MetaTrainer(tiny_config("iterations=1", *options), tmp_path / "b",
                        progress=False)
    first.train()
    resumed = MetaTrainer.resume(tmp_path / "b", progress=False, iterations=2)
    assert resumed.iteration == 1
    resumed.train()
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert a["iteration"] == b["iteration"] == 2
    for name, value in a["model"]["params"].items():
        assert torch.equal(value, b["model"]["params"][name]), name
    assert torch.equal(a["normalizer"]["mean"], b["normalizer"]["mean"])
    # Logs, config and per-iteration episode records are in the run directory.
    run = tmp_path / "a"
    assert (run / "config.yaml").exists() and (run / "log.jsonl").exists()
    assert sorted(p.name for p in (run / "episodes").iterdir()) == ["iter_00000.npz",
                                                                    "iter_00001.npz"]
    assert any((run / "tb").iterdir())


def test_non_finite_updates_are_skipped_then_training_stops(tmp_path, monkeypatch):
    trainer = MetaTrainer(tiny_config("iterations=5", "max_nonfinite_updates=2"),
                          tmp_path, progress=False)
    good = {k: v.detach().clone() for k, v in trainer.params.items()}

    def nan_loss(*args, **kwargs):
        loss, stats = original(*args, **kwargs)
        return loss * float("nan"), stats

    original = maml.outer_loss
    monkeypatch.setattr(maml, "outer_loss", nan_loss)
    with pytest.raises(TrainingDiverged, match="consecutive non-finite"):
        trainer.train()
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    for name, value in state["model"]["params"].items():
        assert torch.isfinite(value).all()
        assert torch.equal(value, good[name])  # no update was applied
    events = (tmp_path / "log.jsonl").read_text()
    assert "update skipped" in events


@pytest.mark.parametrize("options", [["outer.algo=reptile"], ["outer.algo=es"],
                                     ["inner.meta_sgd=true"],
                                     ["inner.first_order=true", "inner.steps=2"],
                                     ["inner.loss=dice"], ["advantages.baseline=mlp"]])
def test_algorithm_options_train_and_move_parameters(tmp_path, options):
    trainer = MetaTrainer(tiny_config("iterations=1", *options), tmp_path, progress=False)
    before = {k: v.detach().clone() for k, v in trainer.params.items()}
    lr_before = ({k: v.detach().clone() for k, v in trainer.meta_sgd_lr.items()}
                 if trainer.meta_sgd_lr is not None else None)
    scalars = trainer.run_iteration()
    trainer.close()
    assert all(math.isfinite(v) for v in scalars.values())
    assert any(not torch.equal(before[k], v) for k, v in trainer.params.items())
    if lr_before is not None:  # Meta-SGD learns its inner learning rates
        assert any(not torch.equal(lr_before[k], v) for k, v in trainer.meta_sgd_lr.items())


# ----------------------------------------------------------------------------- processes
def _train_process(run_dir: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "metarobot.cli", "train", "--config", "reach-cpu",
            "--run-dir", str(run_dir), "--no-progress"]
    for item in TINY + ["iterations=50", *extra]:
        args += ["--set", item]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_iteration(run_dir: Path, iteration: int, proc: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        ckpt = run_dir / "checkpoint.pt"
        if ckpt.exists() and load_checkpoint(ckpt)["iteration"] >= iteration:
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    raise AssertionError("no checkpoint in time")


def test_sigterm_checkpoints_and_sigkill_resumes(tmp_path):
    run_dir = tmp_path / "run"
    proc = _train_process(run_dir)
    _wait_for_iteration(run_dir, 1, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out  # stopped, not finished: non-zero
    assert "stopped by signal" in out
    assert "metarobot train: stopped by SIGTERM" in out and "--resume" in out
    stopped_at = load_checkpoint(run_dir / "checkpoint.pt")["iteration"]
    assert 1 <= stopped_at < 50

    # SIGKILL: no chance to clean up; the last checkpoint must still load and resume.
    proc = subprocess.Popen([sys.executable, "-m", "metarobot.cli", "train", "--resume",
                             str(run_dir), "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _wait_for_iteration(run_dir, stopped_at + 1, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    killed_at = load_checkpoint(run_dir / "checkpoint.pt")["iteration"]
    assert killed_at > stopped_at
    assert cli_main(["train", "--resume", str(run_dir), "--iterations",
                     str(killed_at + 1), "--no-progress"]) == 0
    assert load_checkpoint(run_dir / "checkpoint.pt")["iteration"] == killed_at + 1


# ----------------------------------------------------------------------------- CLI
def test_cli_envs_lists_every_family(capsys):
    assert cli_main(["envs"]) == 0
    out = capsys.readouterr().out
    for family in FAMILY_NAMES:
        assert family in out
    assert "hidden" in out


def test_cli_rejects_a_bad_override_with_its_name(capsys, tmp_path):
    assert cli_main(["train", "--set", "inner.nope=1", "--run-dir", str(tmp_path)]) == 2
    assert "inner.nope" in capsys.readouterr().err


def test_read_log_keeps_iterations_without_events_and_the_redone_record(tmp_path):
    from metarobot.training.runlog import RunLogger, read_log

    logger = RunLogger(tmp_path, total_iterations=3, progress=False)
    logger.log(1, {"return/pre": 1.0})
    logger.event("sampler: worker 0 replaced", iteration=1)
    logger.log(2, {"return/pre": 2.0})
    logger.close()
    resumed = RunLogger(tmp_path, total_iterations=3, start_iteration=1, progress=False)
    resumed.log(2, {"return/pre": 2.5})  # iteration 2 redone after a resume
    resumed.close()
    log = read_log(tmp_path)
    assert list(log) == [1, 2]
    assert log[1]["return/pre"] == 1.0 and log[2]["return/pre"] == 2.5
    assert all("event" not in r for r in log.values())
    assert read_log(tmp_path / "missing") == {}
