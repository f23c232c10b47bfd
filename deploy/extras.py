"""What the base install leaves out: the ``train`` extra, and the one-line message a
command prints when it needs it.

``pip install metarobot`` installs the device runtime (numpy + onnxruntime); training,
export and the simulator need ``pip install 'metarobot[train]'``. A command that needs
the extra catches the ``ModuleNotFoundError`` of one of :data:`TRAIN_EXTRA_MODULES` where
it imports its modules and reports it with :func:`needs_train_extra`.
"""

from __future__ import annotations

INSTALL_TRAIN_EXTRA = "pip install 'metarobot[train]'"

#: Top-level modules of the ``train`` extra's distributions (import name -> distribution
#: name in pyproject.toml); tests/test_packaging.py checks it against pyproject.toml.
TRAIN_EXTRA_MODULES: dict[str, str] = {
    "torch": "torch",
    "pybullet": "pybullet",
    "pybullet_data": "pybullet",
    "gymnasium": "gymnasium",
    "stable_baselines3": "stable-baselines3",
    "onnx": "onnx",
    "onnxscript": "onnxscript",
    "yaml": "pyyaml",
    "tqdm": "tqdm",
    "tensorboard": "tensorboard",
    "matplotlib": "matplotlib",
    "moviepy": "moviepy",
}


def missing_train_module(err: ImportError) -> str | None:
    """The module of the ``train`` extra whose absence raised ``err``, or None when
    ``err`` is another import error (a broken install or a bug: not the user's to fix
    with the extra)."""
    if isinstance(err, ModuleNotFoundError) and err.name in TRAIN_EXTRA_MODULES:
        return err.name
    return None


def needs_train_extra(module: str) -> str:
    """``"needs the training extra (<module> is not installed): pip install ..."``."""
    return f"needs the training extra ({module} is not installed): {INSTALL_TRAIN_EXTRA}"
