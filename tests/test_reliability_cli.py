"""Training side of docs/reliability.md: nothing lost, every bad input one line and exit 2.

Runs here are tiny (2 tasks x 2 episodes, envs in the test process) and most never run an
iteration: ``iterations=0`` writes the starting checkpoint and stops.
"""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metarobot.algos import maml
from metarobot.cli import main as cli_main
from metarobot.training.checkpoint import load_checkpoint
from metarobot.training.runlog import RunLogger, read_log

TINY = ["meta_batch.tasks=2", "meta_batch.episodes=2", "sampler.num_workers=0",
        "sampler.envs_per_worker=2", "checkpoint_every=1", "device=cpu", "outer.epochs=1",
        "env_kwargs={max_episode_steps: 10}"]  # short episodes: fast iterations


def train_args(run_dir: Path, *extra: str, iterations: int = 0) -> list[str]:
    args = ["train", "--config", "reach-cpu", "--run-dir", str(run_dir), "--no-progress"]
    for item in [*TINY, f"iterations={iterations}", *extra]:
        args += ["--set", item]
    return args


def one_line_error(capsys: pytest.CaptureFixture, command: str = "train") -> str:
    """The CLI's stderr, asserted to be exactly one error line without a traceback."""
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"metarobot {command}: error: ") and "Traceback" not in err, err
    return err


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory and its bytes."""
    return {str(p.relative_to(run_dir)): p.read_bytes()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run directory with a checkpoint at iteration 0, its config and its log."""
    run_dir = tmp_path / "run"
    assert cli_main(train_args(run_dir)) == 0
    return run_dir


# ----------------------------------------------------------------------------- item 1
def test_train_into_an_existing_run_refuses_and_loses_nothing(run, capsys):
    (run / "episodes").mkdir(exist_ok=True)
    (run / "episodes" / "iter_00000.npz").write_bytes(b"episodes")
    before = snapshot(run)
    capsys.readouterr()
    # A grasp config into a reach run: the case that mixed two runs' logs before.
    assert cli_main(["train", "--family", "grasp", "--run-dir", str(run), "--no-progress"]) == 2
    err = one_line_error(capsys)
    assert "already holds a run" in err and f"--resume {run}" in err and "--overwrite" in err
    assert "overwrite=True" not in err.split("(Python:")[0]
    assert snapshot(run) == before


@pytest.mark.parametrize("marker", ["checkpoint.pt", "config.yaml", "log.jsonl"])
def test_any_one_run_file_makes_a_directory_a_run(tmp_path, capsys, marker):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / marker).write_text("kept\n")
    assert cli_main(train_args(run_dir)) == 2
    assert marker in one_line_error(capsys)
    assert [p.name for p in run_dir.iterdir()] == [marker]
    assert (run_dir / marker).read_text() == "kept\n"


def test_overwrite_replaces_the_run_and_keeps_other_files(run, capsys):
    (run / "notes.txt").write_text("mine\n")
    (run / "eval").mkdir()
    (run / "eval" / "evaluation_test.json").write_text("{}")
    with (run / "log.jsonl").open("a") as log:
        log.write('{"iteration": 99, "return/pre": -1.0}\n')  # a record of the old run
    assert cli_main(train_args(run, "seed=7") + ["--overwrite"]) == 0
    assert (run / "notes.txt").read_text() == "mine\n"
    assert not (run / "eval").exists()
    assert load_checkpoint(run / "checkpoint.pt")["config"]["seed"] == 7
    log = (run / "log.jsonl").read_text()
    assert "--overwrite: removed the previous run's" in log
    assert read_log(run) == {}  # a fresh log, not two runs mixed


def test_overwrite_refuses_a_directory_that_is_not_recognisably_a_run(tmp_path, capsys):
    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "config.yaml").write_text("family: reach\ninner: {lr: 0.05}\n")  # a user's own
    (folder / "log.jsonl").write_text("my notes\n")
    before = snapshot(folder)
    assert cli_main(train_args(folder) + ["--overwrite"]) == 2
    assert "not recognisably a metarobot run" in one_line_error(capsys)
    assert snapshot(folder) == before


def test_a_directory_without_run_files_is_used_as_it_is(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "slurm.out").write_text("scheduler output\n")
    assert cli_main(train_args(folder)) == 0
    assert (folder / "slurm.out").read_text() == "scheduler output\n"
    assert load_checkpoint(folder / "checkpoint.pt")["iteration"] == 0


def test_orphan_temporary_files_are_removed_at_start_and_on_resume(tmp_path, run):
    orphans = [run / ".checkpoint.pt.a1b2c3.tmp", run / ".config.yaml.x9y8.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"half a checkpoint")
    assert cli_main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert not any(p.exists() for p in orphans)
    assert "leftover temporary files" in (run / "log.jsonl").read_text()
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 0
    # A new run with --overwrite removes them too (they belong to the old run).
    orphans[0].write_bytes(b"half a checkpoint")
    assert cli_main(train_args(run) + ["--overwrite"]) == 0
    assert not orphans[0].exists()
    assert not list(run.glob(".*.tmp"))


# ----------------------------------------------------------------------------- item 2
@pytest.mark.parametrize("override, key", [
    ("outer.max_grad_norm=-1", "outer.max_grad_norm"),
    ("outer.max_grad_norm=0", "outer.max_grad_norm"),
    ("outer.reptile_lr=-5", "outer.reptile_lr"),
    ("max_nonfinite_updates=-5", "max_nonfinite_updates"),
    ("inner.lr=.inf", "inner.lr"),
    ("seed=-1", "seed"),
    ("policy.init_log_std=.inf", "policy.init_log_std"),
    ("env_kwargs={bogus: 1}", "env_kwargs"),
])
def test_bad_values_are_refused_before_anything_is_written(tmp_path, capsys, override, key):
    run_dir = tmp_path / "run"
    assert cli_main(train_args(run_dir, override)) == 2
    err = one_line_error(capsys)
    assert key in err
    assert "allowed:" in err or "is not accepted by sim_envs/Reach-v0" in err
    assert not run_dir.exists()


@pytest.mark.parametrize("document", ["- family: reach\n", "3\n"])
def test_a_config_file_that_is_not_a_mapping_is_one_line(tmp_path, capsys, document):
    path = tmp_path / "mine.yaml"
    path.write_text(document)
    args = ["train", "--config", str(path), "--family", "reach", "--set", "iterations=1",
            "--run-dir", str(tmp_path / "run")]
    assert cli_main(args) == 2
    assert "must be a YAML mapping" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_unknown_family_and_config_name_are_one_line(tmp_path, capsys):
    assert cli_main(["train", "--family", "nope", "--run-dir", str(tmp_path / "r")]) == 2
    assert "unknown family 'nope'" in one_line_error(capsys)
    assert cli_main(["train", "--config", "nope-cpu", "--run-dir", str(tmp_path / "r")]) == 2
    assert "no shipped config named 'nope-cpu'" in one_line_error(capsys)
    assert not (tmp_path / "r").exists()


def test_resume_applies_the_safe_keys(run):
    assert cli_main(["train", "--resume", str(run), "--no-progress", "--device", "cpu",
                     "--set", "checkpoint_every=5", "--set", "sampler.envs_per_worker=3",
                     "--set", "max_nonfinite_updates=1", "--iterations", "0"]) == 0
    config = load_checkpoint(run / "checkpoint.pt")["config"]
    assert config["checkpoint_every"] == 5 and config["sampler"]["envs_per_worker"] == 3
    assert config["max_nonfinite_updates"] == 1 and config["device"] == "cpu"


@pytest.mark.parametrize("extra, named", [
    (["--set", "inner.lr=0.5"], "'inner.lr'"),
    (["--set", "policy.hidden=[8]"], "'policy.hidden'"),
    (["--config", "reach"], "--config"),
    (["--family", "grasp"], "--family"),
    (["--overwrite"], "--overwrite"),
    (["--run-dir", "elsewhere"], "different directories"),
])
def test_resume_refuses_what_it_cannot_change(run, capsys, extra, named):
    before = snapshot(run)
    capsys.readouterr()
    assert cli_main(["train", "--resume", str(run), "--no-progress", *extra]) == 2
    assert named in one_line_error(capsys)
    assert snapshot(run) == before


# ----------------------------------------------------------------------------- item 3
def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, capsys,
                                                                monkeypatch):
    run_dir = tmp_path / "run"
    real_save = torch.save
    calls = []

    def save_until_the_disk_is_full(obj: object, f: object) -> None:
        calls.append(1)
        if len(calls) == 1:  # the starting checkpoint fits
            return real_save(obj, f)
        f.write(b"the first bytes of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    assert cli_main(train_args(run_dir, iterations=2)) == 2
    err = one_line_error(capsys)
    assert "No space left on device" in err and "the previous checkpoint is intact" in err
    assert load_checkpoint(run_dir / "checkpoint.pt")["iteration"] == 0
    assert not list(run_dir.glob(".*.tmp"))
    monkeypatch.setattr(torch, "save", real_save)  # space freed: the run resumes
    assert cli_main(["train", "--resume", str(run_dir), "--no-progress"]) == 0
    assert load_checkpoint(run_dir / "checkpoint.pt")["iteration"] == 2


@pytest.mark.parametrize("where, reason", [
    (lambda tmp: tmp / "a-file" / "run", "Not a directory"),
    (lambda tmp: tmp / "a-file", "is not a directory"),
    (lambda tmp: Path("/proc/metarobot-test/run"), "No such file or directory"),
    (lambda tmp: Path("/sys/metarobot-test"), "Operation not permitted"),
])
def test_run_directories_that_cannot_be_made_are_one_line(tmp_path, capsys, where, reason):
    (tmp_path / "a-file").write_text("a file, not a folder\n")
    assert cli_main(train_args(where(tmp_path))) == 2
    assert reason in one_line_error(capsys)
    assert (tmp_path / "a-file").read_text() == "a file, not a folder\n"


@pytest.mark.parametrize("code, reason", [(errno.EROFS, "Read-only file system"),
                                          (errno.EACCES, "Permission denied")])
def test_unwritable_run_directories_are_one_line(tmp_path, capsys, monkeypatch, code, reason):
    from deploy import files

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(code, reason, kwargs.get("dir"))

    # Root ignores permission bits, so the mount's refusal is simulated at the write.
    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    assert cli_main(train_args(tmp_path / "run")) == 2
    assert reason in one_line_error(capsys)


def test_unreadable_configs_are_one_line(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "a-folder.yaml"
    folder.mkdir()
    assert cli_main(["train", "--config", str(folder), "--run-dir", str(tmp_path / "r")]) == 2
    assert "cannot read config" in one_line_error(capsys)
    secret = tmp_path / "secret.yaml"
    secret.write_text("family: reach\n")
    real_read = Path.read_text

    def read_text(path: Path, *args: object, **kwargs: object) -> str:
        if path == secret:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    assert cli_main(["train", "--config", str(secret), "--run-dir", str(tmp_path / "r")]) == 2
    assert "Permission denied" in one_line_error(capsys)
    assert not (tmp_path / "r").exists()


def test_a_diverged_training_is_one_line(tmp_path, capsys, monkeypatch):
    original = maml.outer_loss

    def nan_loss(*args: object, **kwargs: object) -> object:
        loss, stats = original(*args, **kwargs)
        return loss * float("nan"), stats

    monkeypatch.setattr(maml, "outer_loss", nan_loss)
    run_dir = tmp_path / "run"
    assert cli_main(train_args(run_dir, "max_nonfinite_updates=1", iterations=2)) == 2
    assert "consecutive non-finite updates" in one_line_error(capsys)
    assert load_checkpoint(run_dir / "checkpoint.pt")["iteration"] == 0


def test_evaluate_rejects_zero_episodes_and_a_missing_run(run, capsys):
    assert cli_main(["evaluate", str(run), "--episodes", "0"]) == 2
    assert "episodes must be an integer >= 1, got 0" in one_line_error(capsys, "evaluate")
    assert cli_main(["evaluate", str(run), "--tasks", "0"]) == 2
    assert "num_tasks must be an integer >= 1" in one_line_error(capsys, "evaluate")
    assert cli_main(["evaluate", str(run), "--adapt-steps", "-1"]) == 2
    assert "adapt_steps must be an integer >= 0" in one_line_error(capsys, "evaluate")
    assert cli_main(["evaluate", str(run.parent / "nothing")]) == 2
    assert "no checkpoint at" in one_line_error(capsys, "evaluate")
    assert not (run / "eval").exists()


def test_the_installed_command_prints_one_line_and_exits_2(tmp_path):
    (tmp_path / "a-file").write_text("")
    result = subprocess.run([sys.executable, "-m", "metarobot.cli", *train_args(
        tmp_path / "a-file" / "run")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("metarobot train: error: "), result.stderr


# ----------------------------------------------------------------------------- kills and logs
def test_a_log_record_torn_by_a_kill_is_dropped_and_the_log_stays_readable(tmp_path):
    logger = RunLogger(tmp_path, total_iterations=3, progress=False)
    logger.log(1, {"return/pre": 1.0})
    logger.close()
    with (tmp_path / "log.jsonl").open("a") as f:
        f.write('{"iteration": 2, "return/p')  # killed mid-write
    assert list(read_log(tmp_path)) == [1]  # a reader skips the torn line
    resumed = RunLogger(tmp_path, total_iterations=3, start_iteration=1, progress=False)
    resumed.log(2, {"return/pre": 2.0})
    resumed.close()
    assert read_log(tmp_path)[2]["return/pre"] == 2.0
    text = (tmp_path / "log.jsonl").read_text()
    assert "return/p\"" not in text.replace('"return/pre"', "")
    assert "dropped the torn last record" in text
    (tmp_path / "log.jsonl").write_text(text.replace('{"iteration": 1', "garbage", 1))
    with pytest.raises(ValueError, match=r"log.jsonl:1 is not a JSON record"):
        read_log(tmp_path)
