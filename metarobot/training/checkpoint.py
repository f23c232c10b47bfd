"""Checkpoints: the typed :class:`Checkpoint` format and its atomic writer and reader.

The trainer writes a :class:`Checkpoint` (as a dict, with :func:`torch.save`) into
``<run_dir>/``:data:`CHECKPOINT_NAME`; :func:`load_run` reads it back for evaluation, export
and the benchmarks, and :meth:`metarobot.training.trainer.MetaTrainer.resume` to continue. A crash,
a kill or a NaN never destroys the last good state (atomic writes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from deploy.files import atomic_write_bytes

FORMAT_VERSION = 1
#: The checkpoint's file name in a run directory.
CHECKPOINT_NAME = "checkpoint.pt"
REQUIRED_KEYS = ("format_version", "iteration", "config", "model", "optimizer", "normalizer",
                 "rng", "algo_state")


@dataclass(frozen=True)
class ModelState:
    """The policy of a checkpoint.

    Attributes:
        params: the meta-learned parameters by name (``GaussianMLPPolicy`` names and
            shapes), on the CPU.
        obs_dim, act_dim: observation and action sizes ``O``, ``A`` of the policy.
    """

    params: dict[str, Tensor]
    obs_dim: int
    act_dim: int


@dataclass(frozen=True)
class AlgoState:
    """The meta-learner's own state.

    Attributes:
        eta: the current KL-penalty coefficient.
        env_steps: env steps sampled so far (all tasks and batches).
        recent_adaptation_kl: the largest adaptation KL (nats) of each of the last
            iterations (``[]`` in checkpoints that predate it).
        meta_sgd_lr: Meta-SGD's per-parameter inner learning rates (None without).
        value_baseline: the learned value baseline's state dict (None without).
        curriculum_levels: the terrain curriculum's level per group (None without).
        reward_normalizer: the RL2 reward input's normaliser state dict (``mean``,
            ``var`` ``[1]``, ``count``; None without ``policy.reward_norm``).
    """

    eta: float
    env_steps: int
    recent_adaptation_kl: list[float] = field(default_factory=list)
    meta_sgd_lr: dict[str, Tensor] | None = None
    value_baseline: dict[str, Any] | None = None
    curriculum_levels: dict[str, float] | None = None
    reward_normalizer: dict[str, Any] | None = None


@dataclass(frozen=True)
class Checkpoint:
    """A training checkpoint; on disk the dict of :meth:`to_dict` (keys
    :data:`REQUIRED_KEYS`, unchanged since format version 1).

    Attributes:
        iteration: meta-iterations done.
        config: the run's config as a dict (:meth:`metarobot.training.config.TrainConfig.to_dict`).
        model: the policy (:class:`ModelState`).
        optimizer: the Adam optimizer's state dict.
        normalizer: the observation normaliser's state dict (``mean``, ``var`` ``[O]``, ...).
        rng: the random states: ``torch``, ``generator`` (action noise), ``numpy``.
        algo_state: the meta-learner's state (:class:`AlgoState`).
    """

    iteration: int
    config: dict[str, Any]
    model: ModelState
    optimizer: dict[str, Any]
    normalizer: dict[str, Any]
    rng: dict[str, Any]
    algo_state: AlgoState

    def to_dict(self) -> dict[str, Any]:
        """The dict saved on disk (and given to ``MetaTrainer.load_state_dict``)."""
        model, algo = self.model, self.algo_state
        return {
            "format_version": FORMAT_VERSION,
            "iteration": self.iteration,
            "config": self.config,
            "model": {"params": model.params, "obs_dim": model.obs_dim,
                      "act_dim": model.act_dim},
            "optimizer": self.optimizer,
            "normalizer": self.normalizer,
            "rng": self.rng,
            "algo_state": {"eta": algo.eta, "env_steps": algo.env_steps,
                           "recent_adaptation_kl": list(algo.recent_adaptation_kl),
                           "meta_sgd_lr": algo.meta_sgd_lr,
                           "value_baseline": algo.value_baseline,
                           "curriculum_levels": algo.curriculum_levels,
                           "reward_normalizer": algo.reward_normalizer},
        }

    @staticmethod
    def from_dict(state: Any, where: str = "checkpoint") -> Checkpoint:
        """Parse a checkpoint dict (as :meth:`to_dict` writes it, or an older file that
        lacks the optional ``algo_state`` keys).

        Raises:
            ValueError: not a metarobot checkpoint of this format version, naming
                ``where`` and what is missing.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"{where} is not a metarobot checkpoint")
        missing = [k for k in REQUIRED_KEYS if k not in state]
        if missing:
            raise ValueError(f"{where} is not a metarobot checkpoint (missing {missing})")
        if state["format_version"] != FORMAT_VERSION:
            raise ValueError(f"{where} has format version {state['format_version']}, "
                             f"this metarobot reads version {FORMAT_VERSION}")
        try:
            model, algo = state["model"], state["algo_state"]
            return Checkpoint(
                iteration=int(state["iteration"]), config=state["config"],
                model=ModelState(dict(model["params"]), int(model["obs_dim"]),
                                 int(model["act_dim"])),
                optimizer=state["optimizer"], normalizer=state["normalizer"], rng=state["rng"],
                algo_state=AlgoState(
                    eta=float(algo["eta"]), env_steps=int(algo["env_steps"]),
                    recent_adaptation_kl=list(algo.get("recent_adaptation_kl", [])),
                    meta_sgd_lr=algo.get("meta_sgd_lr"),
                    value_baseline=algo.get("value_baseline"),
                    curriculum_levels=algo.get("curriculum_levels"),
                    reward_normalizer=algo.get("reward_normalizer")))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{where} is not a metarobot checkpoint (bad model or "
                             f"algo_state: {type(err).__name__}: {err})") from None


def temporary_files(directory: Path, name: str) -> list[Path]:
    """The temporary files :func:`atomic_write_bytes` leaves for ``directory/name`` when
    it is killed before its rename (``.NAME.*.tmp``)."""
    return sorted(p for p in Path(directory).glob(f".{name}.*.tmp") if p.is_file())


def remove_orphan_temporaries(directory: Path, names: tuple[str, ...]) -> list[Path]:
    """Delete the leftover temporary files of ``names`` in ``directory``; returns them.

    Only for a directory this process owns (a run being started or resumed): another
    writer's temporary file would be taken from under it.
    """
    removed = [tmp for name in names for tmp in temporary_files(directory, name)]
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed


def save_checkpoint(path: Path, state: Checkpoint | dict[str, Any]) -> None:
    """Save a checkpoint atomically (a dict must have :data:`REQUIRED_KEYS`)."""
    if isinstance(state, Checkpoint):
        state = state.to_dict()
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load and check a checkpoint file; returns the dict on disk (see
    :meth:`Checkpoint.to_dict`). A corrupt or incompatible file raises ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a damaged file
        raise ValueError(f"checkpoint {path} is corrupt or unreadable: {err}") from err
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} is not a metarobot checkpoint")
    Checkpoint.from_dict(state, f"checkpoint {path}")  # keys, version and sections
    return state


def load_run(run_dir: str | Path) -> Checkpoint:
    """The last checkpoint of the run in ``run_dir`` (its :data:`CHECKPOINT_NAME`), typed.

    Raises:
        ValueError: no checkpoint there, or a corrupt or incompatible one.
    """
    path = Path(run_dir) / CHECKPOINT_NAME
    return Checkpoint.from_dict(load_checkpoint(path), f"checkpoint {path}")
