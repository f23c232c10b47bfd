"""The bundles shipped in ``assets/bundles/<family>/`` (issue 18, item 7).

Every shipped bundle loads with the device runtime, its files match the manifest's sizes
and SHA-256, it is at most 2 MB, and it fits its family's *current* env (observation and
action spaces of ``gymnasium.make(env_id, **env_kwargs)``), so a change to an env cannot
silently break a shipped bundle. ``metarobot-deploy adapt --bundle <name>`` takes a shipped
name; an unknown name is one line and exit 2. No shipped bundle at all is a failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gymnasium
import numpy as np
import pytest

import sim_envs  # noqa: F401  (registers the sim_envs/* ids)
from deploy import AdaptivePolicy, BundleError, load_bundle, shipped_bundles
from deploy.bundle import MANIFEST_NAME, decode_array, file_sha256
from deploy.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "assets" / "bundles"
MAX_BYTES = 2_000_000  # "at most 2 MB" per bundle, all its files together
SHIPPED = sorted(p.name for p in BUNDLES.glob("*") if (p / MANIFEST_NAME).is_file())


def test_at_least_one_bundle_ships():
    assert SHIPPED, f"no bundle under {BUNDLES} (each needs a {MANIFEST_NAME})"


def test_the_installed_assets_package_resolves_the_shipped_bundles():
    """``deploy`` finds them through the installed ``assets`` package (this checkout with
    an editable install, a copy in site-packages with ``pip install .``): the same names,
    and the same files as this checkout's."""
    found = shipped_bundles()
    assert sorted(found) == SHIPPED
    for name, path in found.items():
        assert (path / MANIFEST_NAME).read_bytes() == (BUNDLES / name / MANIFEST_NAME).read_bytes()
        assert sorted(p.name for p in path.iterdir()) == sorted(
            p.name for p in (BUNDLES / name).iterdir())


def test_package_data_globs_cover_every_shipped_file():
    """A wheel install carries every bundle file (pyproject's package-data for ``assets``;
    setuptools expands these globs relative to the package like ``Path.glob``)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["assets"]
    covered = {p.resolve() for pattern in patterns for p in (ROOT / "assets").glob(pattern)}
    files = [p.resolve() for p in BUNDLES.rglob("*") if p.is_file()]
    assert files and not [f for f in files if f not in covered]


def _manifest(name: str) -> dict:
    return json.loads((BUNDLES / name / MANIFEST_NAME).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_bundle_files_match_the_manifest_and_fit_in_2_mb(name):
    folder = BUNDLES / name
    manifest = _manifest(name)
    listed = manifest["files"]
    on_disk = sorted(p.name for p in folder.iterdir())
    # Nothing beside the manifest and the files it lists (so the hashes cover everything).
    assert on_disk == sorted([MANIFEST_NAME, *listed])
    for file_name, entry in listed.items():
        path = folder / file_name
        assert path.stat().st_size == entry["size"], file_name
        assert file_sha256(path) == entry["sha256"], file_name
    total = sum(p.stat().st_size for p in folder.iterdir())
    assert total <= MAX_BYTES, f"{name}: {total} bytes > {MAX_BYTES}"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_bundle_loads_and_fits_its_familys_current_env(name):
    bundle = load_bundle(BUNDLES / name, family=name)  # opens and checks every model
    meta = bundle.metadata
    assert meta["family"] == name  # assets/bundles/<family>/
    env = gymnasium.make(meta["env_id"], **meta.get("env_kwargs", {}))
    try:
        assert env.unwrapped.family.name == name
        obs_space, act_space = meta["observation_space"], meta["action_space"]
        assert env.observation_space.shape == tuple(obs_space["shape"])
        assert env.action_space.shape == tuple(act_space["shape"])
        assert str(env.observation_space.dtype) == obs_space["dtype"]
        assert str(env.action_space.dtype) == act_space["dtype"]
        np.testing.assert_array_equal(env.action_space.low, decode_array(act_space["low"]))
        np.testing.assert_array_equal(env.action_space.high, decode_array(act_space["high"]))
        np.testing.assert_array_equal(env.observation_space.low,
                                      decode_array(obs_space["low"]))
        np.testing.assert_array_equal(env.observation_space.high,
                                      decode_array(obs_space["high"]))
        # By name, as a user would: the runtime acts on a real observation of the env.
        with AdaptivePolicy.load(name, seed=0) as policy:
            assert policy.bundle.path == shipped_bundles()[name]
            task = env.unwrapped.sample_tasks(1, split="test", seed=0)[0]
            env.unwrapped.set_task(task)
            obs, _ = env.reset(seed=0)
            action = policy.act(obs)
            assert env.action_space.contains(action)
            env.step(action)
    finally:
        env.close()


def test_cli_adapts_a_shipped_bundle_by_name(tmp_path):
    """``metarobot-deploy adapt --bundle reach`` with no bundle directory around."""
    name = "reach" if "reach" in SHIPPED else SHIPPED[0]
    # The installed package (editable or not), run where no folder of that name exists.
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "adapt", "--bundle", name, "--tasks", "1",
         "--episodes", "2"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    words = lines[0].split()
    assert words[0] == "bundle" and words[2] == f"({name}),"
    assert Path(words[1]).parts[-3:] == ("assets", "bundles", name)
    assert len([ln for ln in lines if ln.startswith(f"{name}-test-")]) == 1
    assert lines[-1].startswith("mean")


def test_cli_json_records_what_the_table_prints(tmp_path, capsys):
    """``--json``: each task's episodes, their means (equal to the printed mean row), the
    arguments and the bundle's parameter hash; an unwritable path is one line, exit 2."""
    name = "reach" if "reach" in SHIPPED else SHIPPED[0]
    out = tmp_path / "results" / "adapt.json"
    args = ["adapt", "--bundle", name, "--tasks", "2", "--episodes", "2", "--seed", "3"]
    assert cli_main(args + ["--json", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    record = json.loads(out.read_text())
    assert record["command"] == "metarobot-deploy " + " ".join(args + ["--json", str(out)])
    assert [p.name for p in out.parent.iterdir()] == ["adapt.json"]  # no temporary left
    assert record["family"] == load_bundle(name).family
    assert record["params_sha256"] == load_bundle(name).spec.params.sha256
    assert (record["seed"], record["episodes"], record["adapt_steps"]) == (3, 2, 1)
    assert len(record["tasks"]) == 2
    for task in record["tasks"]:
        assert len(task["returns_before"]) == len(task["returns_after"]) == 2
        assert f"{task['task_id']} " in "\n".join(printed)
    mean_before = np.mean([np.mean(t["returns_before"]) for t in record["tasks"]])
    assert record["mean"]["return_before"] == pytest.approx(mean_before)
    mean_row = next(ln for ln in printed if ln.startswith("mean")).split()[1:]
    assert [float(v) for v in mean_row] == pytest.approx(
        [record["mean"][k] for k in ("return_before", "return_after", "success_before",
                                     "success_after")], abs=0.006)
    assert cli_main(args + ["--tasks", "1", "--json", str(tmp_path)]) == 2  # a directory
    err = capsys.readouterr().err
    assert err.startswith("metarobot-deploy adapt: error: cannot write --json")
    assert len(err.strip().splitlines()) == 1


def test_cli_unknown_bundle_name_is_one_line_listing_the_shipped_names(tmp_path, monkeypatch,
                                                                       capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["adapt", "--bundle", "no-such-family", "--tasks", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("metarobot-deploy adapt: error: no bundle 'no-such-family'")
    assert f"(shipped: {', '.join(SHIPPED)})" in err
    with pytest.raises(BundleError, match="not a directory, nor the name of a shipped"):
        AdaptivePolicy.load("no-such-family")


def test_an_existing_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
    """``--bundle reach`` next to a local ``reach/`` loads the local one (here: not a
    bundle), so a user's own export is never shadowed by the shipped one."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / SHIPPED[0]).mkdir()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        load_bundle(SHIPPED[0])


def test_the_shipped_walk_bundle_adapts_on_the_device_runtime():
    """The walk bundle draws a per-episode latent and takes the trainer's latent step: on
    two held-out tasks one step on 10 episodes lifts the mean return well above standing
    still's 0 and the return before (measured: -13 -> 77)."""
    from deploy.cli import adapt_task
    from deploy.controller import GymController

    bundle = load_bundle(BUNDLES / "walk", family="walk")
    assert bundle.inner.latent_std is not None  # this test is about a latent bundle
    env = gymnasium.make(bundle.env_id, **bundle.env_kwargs)
    before, after = [], []
    try:
        with AdaptivePolicy(bundle, seed=0) as policy:
            for i, task in enumerate(env.unwrapped.sample_tasks(2, split="test", seed=0)):
                policy.reset_adaptation()
                env.unwrapped.set_task(task)
                (pre, _), (post, _), status = adapt_task(
                    GymController(env, seed=i), policy, episodes=10, steps=1)
                assert status.startswith("accepted"), status
                before.append(np.mean(pre))
                after.append(np.mean(post))
    finally:
        env.close()
    assert np.mean(after) > 40.0 and np.mean(after) > np.mean(before) + 30.0, (before, after)
