"""Training configuration: typed dataclasses, YAML files, ``--set key=value`` overrides.

Every family ships a YAML file under ``assets/configs/<family>.yaml``. Loading validates
it: an unknown key or a value of the wrong type raises ``ValueError`` naming the key.
Overrides use dotted keys with YAML-parsed values, e.g. ``--set inner.lr=0.05``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


@dataclass
class PolicyConfig:
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    init_log_std: float = 0.0


@dataclass
class MetaBatchConfig:
    tasks: int = 40  #: tasks per meta-iteration (M)
    episodes: int = 20  #: episodes per task and per adaptation step (E)


@dataclass
class InnerConfig:
    steps: int = 1  #: inner policy-gradient steps (K)
    lr: float = 0.1
    loss: str = "lvc"  #: "lvc" (ProMP), "dice" or "vpg" (plain log pi * A)
    first_order: bool = False  #: FOMAML: drop second-order terms
    meta_sgd: bool = False  #: learn one inner learning rate per parameter
    clip: float = math.inf  #: likelihood-ratio clip of the inner surrogate (inf = none)


@dataclass
class OuterConfig:
    algo: str = "ppo"  #: "ppo" (PPO-MAML / ProMP) or "reptile"
    lr: float = 1e-3
    epochs: int = 5  #: Adam steps per meta-batch (no resampling); Reptile: inner PPO steps
    clip: float = 0.3
    kl_target: float = 0.01
    eta: float = 1.0  #: initial KL-penalty coefficient
    adaptive_eta: bool = True
    reptile_lr: float = 0.1  #: Reptile's step toward the tasks' adapted parameters
    max_grad_norm: float = 10.0


@dataclass
class AdvantageConfig:
    gamma: float = 0.99
    lam: float = 1.0
    normalize: bool = True
    #: "linear": per-task linear feature baseline everywhere (ProMP). "mlp": the outer
    #: objective's advantages come from a value network trained across iterations
    #: (:mod:`metarobot.value`); the inner step keeps the linear baseline (as the device).
    baseline: str = "linear"
    value_hidden: list[int] = field(default_factory=lambda: [64, 64])
    value_lr: float = 1e-3
    value_epochs: int = 5  #: passes over each post-update batch
    value_minibatch: int = 256
    #: The value network also sees each task's parameters (privileged: simulation only).
    value_task_features: bool = True


@dataclass
class SamplerConfig:
    num_workers: int = 2  #: worker processes (0 = envs in the trainer process)
    envs_per_worker: int = 20


@dataclass
class TrainConfig:
    family: str = "reach"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"  #: "auto", "cpu" or "cuda"
    iterations: int = 500
    checkpoint_every: int = 10
    max_nonfinite_updates: int = 3  #: consecutive skipped updates before training stops
    deterministic: bool = True  #: deterministic torch algorithms (exact resume)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    meta_batch: MetaBatchConfig = field(default_factory=MetaBatchConfig)
    inner: InnerConfig = field(default_factory=InnerConfig)
    outer: OuterConfig = field(default_factory=OuterConfig)
    advantages: AdvantageConfig = field(default_factory=AdvantageConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> TrainConfig:
        """Check values (types are checked on construction from a dict). Returns self."""
        from sim_envs.registry import FAMILY_NAMES

        checks = [
            (self.family in FAMILY_NAMES, f"family must be one of {list(FAMILY_NAMES)}"),
            (self.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda"),
            (self.iterations >= 0, "iterations must be >= 0"),
            (self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
            (self.meta_batch.tasks >= 1, "meta_batch.tasks must be >= 1"),
            (self.meta_batch.episodes >= 1, "meta_batch.episodes must be >= 1"),
            (self.inner.steps >= 1, "inner.steps must be >= 1"),
            (self.inner.lr > 0, "inner.lr must be > 0"),
            (self.inner.loss in ("lvc", "dice", "vpg"), "inner.loss must be lvc, dice or vpg"),
            (self.inner.clip > 0, "inner.clip must be > 0"),
            (self.outer.algo in ("ppo", "reptile"), "outer.algo must be ppo or reptile"),
            (self.outer.lr > 0, "outer.lr must be > 0"),
            (self.outer.epochs >= 1, "outer.epochs must be >= 1"),
            (0 < self.outer.clip < 1, "outer.clip must be in (0, 1)"),
            (self.outer.kl_target > 0, "outer.kl_target must be > 0"),
            (self.outer.eta > 0 if self.outer.adaptive_eta else self.outer.eta >= 0,
             "outer.eta must be > 0 with adaptive_eta (it is doubled and halved), else >= 0"),
            (0 < self.advantages.gamma <= 1, "advantages.gamma must be in (0, 1]"),
            (0 <= self.advantages.lam <= 1, "advantages.lam must be in [0, 1]"),
            (self.advantages.baseline in ("linear", "mlp"),
             "advantages.baseline must be linear or mlp"),
            (self.advantages.value_lr > 0, "advantages.value_lr must be > 0"),
            (self.advantages.value_epochs >= 1, "advantages.value_epochs must be >= 1"),
            (self.advantages.value_minibatch >= 1, "advantages.value_minibatch must be >= 1"),
            (all(h >= 1 for h in self.advantages.value_hidden),
             "advantages.value_hidden widths must be >= 1"),
            (self.sampler.num_workers >= 0, "sampler.num_workers must be >= 0"),
            (self.sampler.envs_per_worker >= 1, "sampler.envs_per_worker must be >= 1"),
            (all(h >= 1 for h in self.policy.hidden), "policy.hidden widths must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid config: {message}")
        return self


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Return ``value`` converted to ``annotation`` or raise ``ValueError`` naming ``key``."""
    origin = typing.get_origin(annotation)
    if annotation is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-6" (no dot) and "inf" as strings; take them as numbers.
            text = value.strip().lower()
            try:
                value = math.inf if text in (".inf", "+.inf") else float(text)
            except ValueError:
                pass
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or math.isnan(value)):
            raise ValueError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if annotation is int or annotation is bool or annotation is str:
        if type(value) is not annotation:
            raise ValueError(
                f"config key {key!r} must be of type {annotation.__name__}, got {value!r}")
        return value
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ValueError(f"config key {key!r} must be a list, got {value!r}")
        return [_check_type(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config key {key!r} must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(annotation):
        return _from_dict(annotation, value, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):  # pragma: no cover - not used yet
        return value
    raise TypeError(f"unsupported config annotation {annotation!r}")


def _from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"config section {prefix.rstrip('.') or '<root>'!r} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config key(s) {[prefix + u for u in unknown]}; "
                         f"known in this section: {sorted(names)}")
    kwargs = {k: _check_type(prefix + k, v, hints[k]) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a (possibly partial) mapping."""
    return _from_dict(TrainConfig, data).validate()


def default_config_path(family: str) -> Path:
    """The shipped YAML config of ``family``."""
    path = Path(str(resources.files("assets") / "configs" / f"{family}.yaml"))
    if not path.exists():
        raise ValueError(f"no shipped config for family {family!r} ({path})")
    return path


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested dict copy."""
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {key!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_config(path: str | Path | None = None, family: str | None = None,
                overrides: list[str] | None = None) -> TrainConfig:
    """Load a YAML config (or the family's shipped one) and apply ``overrides``."""
    if path is None:
        path = default_config_path(family or "reach")
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read config {path}: {err}") from err
    if family is not None:
        data["family"] = family
    return config_from_dict(apply_overrides(data, overrides or []))


def save_config(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
