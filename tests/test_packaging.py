"""The packaging promise, without a network: the base install is the device runtime.

``pip install metarobot`` brings numpy and onnxruntime only; the ``train`` extra brings
torch, pybullet, gymnasium and the rest. So ``deploy`` must run without any module of
the extra, and a command that needs the extra must say so in one line (exit 2). Modules
are made absent here by ``sys.modules[name] = None`` in a fresh interpreter; ``.ci/run``
also installs the base package alone in a fresh venv and runs tests/runtime_only.py there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from deploy.extras import INSTALL_TRAIN_EXTRA, TRAIN_EXTRA_MODULES, missing_train_module

RUNTIME_ONLY = Path(__file__).with_name("runtime_only.py")


def run_python(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -c code args`` in a fresh interpreter (one thread: CI has 2 cores)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def without(*modules: str) -> str:
    """Python source that makes ``modules`` unimportable (ModuleNotFoundError)."""
    return "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)


def distribution(requirement: str) -> str:
    """The normalised distribution name of a requirement line (``"pyyaml>=6.0; extra ==
    'train'"`` -> ``"pyyaml"``)."""
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_install_metadata_base_is_the_runtime_and_train_extra_matches_deploy_extras():
    requires = metadata.requires("metarobot") or []
    base = {distribution(r) for r in requires if "extra ==" not in r}
    train = {distribution(r) for r in requires if re.search(r"extra == .train.", r)}
    dev = [r for r in requires if re.search(r"extra == .dev.", r)]
    assert base == {"numpy", "onnxruntime"}
    assert train == set(TRAIN_EXTRA_MODULES.values())
    assert any(r.startswith("metarobot[train]") for r in dev), dev


def test_missing_train_module_only_for_an_absent_module_of_the_extra():
    assert missing_train_module(ModuleNotFoundError("x", name="torch")) == "torch"
    assert missing_train_module(ModuleNotFoundError("x", name="yaml")) == "yaml"
    # A broken torch (a missing submodule, a library that fails to load) is not fixed by
    # installing the extra: it stays a bug report with its traceback.
    assert missing_train_module(ModuleNotFoundError("x", name="torch._C")) is None
    assert missing_train_module(ImportError("libtorch.so", name="torch")) is None
    assert missing_train_module(ModuleNotFoundError("x", name="requests")) is None


def test_runtime_adapts_a_shipped_bundle_without_train_modules(tmp_path):
    # The script fails if any module of the extra is in sys.modules after loading every
    # deploy module and adapting: stricter than blocking them (an optional import that
    # succeeds counts too).
    code = f"import runpy, sys; sys.argv = [{str(RUNTIME_ONLY)!r}]\n" \
           f"runpy.run_path({str(RUNTIME_ONLY)!r}, run_name='__main__')"
    result = run_python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "runtime-only check ok: bundle reach (reach)" in result.stdout


def test_runtime_only_check_fails_when_a_train_module_is_imported(tmp_path):
    code = f"import yaml, runpy, sys; sys.argv = [{str(RUNTIME_ONLY)!r}]\n" \
           f"runpy.run_path({str(RUNTIME_ONLY)!r}, run_name='__main__')"
    result = run_python(code, cwd=tmp_path)
    assert result.returncode == 1
    assert "imported modules of the train extra: ['yaml']" in result.stderr


def test_runtime_imports_with_the_train_extra_blocked(tmp_path):
    code = without(*TRAIN_EXTRA_MODULES) + (
        "import deploy, deploy.advantages, deploy.bundle, deploy.cli, deploy.controller\n"
        "import deploy.extras, deploy.runtime\n"
        "from deploy.cli import main\n"
        "sys.exit(main())")
    result = run_python(code, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "metarobot-deploy" in result.stdout and "adapt" in result.stdout


def test_deploy_adapt_without_the_simulator_names_the_extra(tmp_path):
    code = without("gymnasium") + "from deploy.cli import main\nsys.exit(main())"
    result = run_python(code, "adapt", "--bundle", "reach", "--tasks", "1", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == ("metarobot-deploy adapt: error: the simulator (sim_envs) needs the "
                             "training extra (gymnasium is not installed): "
                             f"{INSTALL_TRAIN_EXTRA}\n")


@pytest.mark.parametrize("argv", [["train"], ["evaluate", "runs/x"],
                                  ["export", "runs/x", "--out", "bundle"], ["envs"],
                                  ["demo"], ["quickstart"]])
def test_metarobot_without_torch_names_the_extra_in_one_line(argv, tmp_path):
    code = without("torch") + "from metarobot.cli import main\nsys.exit(main())"
    result = run_python(code, *argv, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"metarobot {argv[0]}: error: needs the training extra (torch is "
                             f"not installed): pip install 'metarobot[train]'\n")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("missing, argv", [("pybullet", ["envs"]), ("yaml", ["train"])])
def test_metarobot_names_whichever_module_of_the_extra_is_missing(missing, argv, tmp_path):
    # torch present: the command gets further and stops where it imports the missing one.
    code = without(missing) + "from metarobot.cli import main\nsys.exit(main())"
    result = run_python(code, *argv, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"metarobot {argv[0]}: error: needs the training extra "
                             f"({missing} is not installed): {INSTALL_TRAIN_EXTRA}\n")


def test_metarobot_help_needs_no_extra(tmp_path):
    code = without(*TRAIN_EXTRA_MODULES) + "from metarobot.cli import main\nsys.exit(main())"
    result = run_python(code, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "quickstart" in result.stdout
