"""The Python API; the ``metarobot`` CLI is a thin layer over these functions.

Example::

    from metarobot import api
    run = api.train(config="reach-cpu", overrides=["iterations=20"])
    result = api.evaluate(run, split="test", adapt_steps=2)
    print(result.table())
    api.export(run, "bundle/")
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from metarobot.training.config import TrainConfig, load_config
from metarobot.training.evaluate import EvaluationResult, evaluate_policy, load_trained_policy
from metarobot.training.trainer import MetaTrainer, env_spaces
from sim_envs.registry import FAMILY_NAMES, env_id, make_family


def resolve_config(config: str | Path | None = None, family: str | None = None,
                   overrides: list[str] | None = None) -> TrainConfig:
    """A shipped config name (``reach``, ``reach-cpu``, ...), a YAML path, or the family's
    default, with ``key=value`` overrides applied and validated."""
    if family is not None and family not in FAMILY_NAMES:
        raise ValueError(f"unknown family {family!r}; known: {list(FAMILY_NAMES)}")
    path: Path | None = None
    if config is not None:
        path = Path(config)
        if not path.exists():
            from metarobot.training.config import default_config_path

            path = default_config_path(str(config))
    return load_config(path, family=family if path is None else None,
                       overrides=(["family=" + family] if family and path else [])
                       + list(overrides or []))


def default_run_dir(family: str) -> Path:
    return Path("runs") / f"{family}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(config: str | Path | TrainConfig | None = None, family: str | None = None,
          overrides: list[str] | None = None, run_dir: str | Path | None = None,
          progress: bool = True, overwrite: bool = False) -> Path:
    """Meta-train and return the run directory (holds the checkpoint
    (:data:`metarobot.training.checkpoint.CHECKPOINT_NAME`), logs and config).

    A ``run_dir`` that already holds a run raises ``ValueError`` unless ``overwrite``
    (which replaces only a recognisable run); use :func:`resume` to continue one.
    """
    cfg = config if isinstance(config, TrainConfig) else resolve_config(config, family,
                                                                         overrides)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg.family)
    MetaTrainer(cfg, run_dir, progress=progress, overwrite=overwrite).train()
    return run_dir


def resume(run_dir: str | Path, iterations: int | None = None, progress: bool = True,
           overrides: list[str] | None = None) -> Path:
    """Continue a run from its last checkpoint. ``overrides`` (``key=value``) may change
    only :data:`metarobot.training.config.RESUME_SAFE_KEYS`; others raise ``ValueError``."""
    MetaTrainer.resume(run_dir, progress=progress, iterations=iterations,
                       overrides=overrides).train()
    return Path(run_dir)


def evaluate(run_dir: str | Path, split: str = "test", adapt_steps: int = 3,
             num_tasks: int = 20, episodes: int | None = None, seed: int = 0,
             out_dir: str | Path | None = None) -> EvaluationResult:
    """Return and success before/after each adaptation step; saved as JSON + PNG in
    ``out_dir`` (default ``run_dir/eval``)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    result = evaluate_policy(load_trained_policy(run_dir), split, adapt_steps, num_tasks,
                             episodes, seed)
    result.save(out_dir or Path(run_dir) / "eval", stem=f"evaluation_{split}")
    return result


def export(run_dir: str | Path, out_dir: str | Path, unrolled_steps: tuple[int, ...] = (1, 2, 3),
           overwrite: bool = False) -> Path:
    """Export the run's policy and its adaptation step to an ONNX bundle (an RL2 run: its
    recurrent policy, a memory bundle)."""
    from metarobot.core.inner import EXPORTABLE_INNER_LOSSES, step_sizes
    from metarobot.export.bundle import export_bundle

    policy = load_trained_policy(run_dir)
    cfg = policy.config
    if cfg.inner.loss not in EXPORTABLE_INNER_LOSSES:  # refused before anything is written
        raise ValueError(f"inner.loss: {cfg.inner.loss} is not exportable: a bundle's adapt "
                         f"graph holds one of {list(EXPORTABLE_INNER_LOSSES)}")
    obs_space, act_space = env_spaces(cfg.family, cfg.env_kwargs)
    if cfg.outer.algo == "rl2":  # adapts by memory: the recurrent policy, no inner step
        return export_bundle(policy.model, policy.params, out_dir, family=cfg.family,
                             env_id=env_id(cfg.family), observation_space=obs_space,
                             action_space=act_space, inner_config=None, overwrite=overwrite,
                             env_kwargs=cfg.env_kwargs)
    # The bundle's baseline is the device's (deploy.advantages), the one the trainer's
    # inner step uses too: export_bundle records it.
    inner = {"loss": cfg.inner.loss, "steps": cfg.inner.steps,
             "lr": step_sizes(cfg.inner.adapt, cfg.inner.lr, policy.params,
                              policy.meta_sgd_lr),
             "clip": cfg.inner.clip, "gamma": cfg.advantages.gamma, "lam": cfg.advantages.lam,
             "normalize": cfg.advantages.normalize}
    # The runtime scales a step down until its KL is within max_kl: set it from what
    # training produced (a meta-learned policy is meant to move far in one step), with
    # headroom, but at most MAX_KL_CAP so that the trust region can bind (docs/deploy.md).
    # (None when training measured no KL at all: the bundle then gets the default.)
    largest_kl = max(policy.recent_adaptation_kl, default=0.0)
    safety = {"max_kl": min(3.0 * largest_kl, MAX_KL_CAP)} if largest_kl > 0 else None
    return export_bundle(policy.model, policy.params, out_dir, family=cfg.family,
                         env_id=env_id(cfg.family), observation_space=obs_space,
                         action_space=act_space, inner_config=inner,
                         adapt_steps_options=unrolled_steps, overwrite=overwrite,
                         safety=safety, env_kwargs=cfg.env_kwargs)


#: Largest default ``max_kl`` (nats) an exported bundle gets, so that the runtime's trust
#: region can bind; why 5: docs/deploy.md#adaptation-safety-benchmark-reach-held-out-tasks.
MAX_KL_CAP = 5.0


def list_envs() -> list[dict[str, Any]]:
    """Every family: gymnasium id, split rule and parameters (unit, range, hidden)."""
    return [{"id": env_id(name), **make_family(name).describe()} for name in FAMILY_NAMES]
