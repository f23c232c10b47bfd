"""Training configuration: typed dataclasses, YAML files, ``--set key=value`` overrides.

Every family ships a YAML file under ``assets/configs/<family>.yaml``. Loading validates
it: an unknown key, a value of the wrong type or out of range raises ``ValueError``
naming the key (and the allowed range). Overrides use dotted keys with YAML-parsed
values, e.g. ``--set inner.lr=0.05``; a resumed run takes only those of
:data:`RESUME_SAFE_KEYS`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from deploy.files import atomic_write_bytes
from metarobot.core.inner import INNER_ADAPTS, INNER_LOSSES, InnerAdaptName, InnerLossName

#: The values of the string switches (the types of their config keys).
DeviceName = Literal["auto", "cpu", "cuda"]
#: ``outer.algo``: PPO-MAML (ProMP), Reptile, ES-MAML or RL2 (memory, a GRU policy).
OuterAlgoName = Literal["ppo", "reptile", "es", "rl2"]
#: ``policy.kind``: the MLP the gradient meta-learners adapt, or RL2's GRU.
PolicyKindName = Literal["mlp", "gru"]
#: ``advantages.baseline``: the linear feature baseline or a learned value network.
BaselineName = Literal["linear", "mlp"]
#: ``sampler.backend``: worker processes on this machine, or Ray actors.
SamplerBackendName = Literal["local", "ray"]
#: Allowed values of the string keys (for validation messages and the CLI).
DEVICES: tuple[DeviceName, ...] = get_args(DeviceName)
OUTER_ALGOS: tuple[OuterAlgoName, ...] = get_args(OuterAlgoName)
BASELINES: tuple[BaselineName, ...] = get_args(BaselineName)
POLICY_KINDS: tuple[PolicyKindName, ...] = get_args(PolicyKindName)
SAMPLER_BACKENDS: tuple[SamplerBackendName, ...] = get_args(SamplerBackendName)
#: The largest seed torch's generators take as a signed 64-bit integer.
MAX_SEED = 2**63 - 1

@dataclass
class PolicyConfig:
    #: "mlp": Gaussian MLP (``ppo``, ``reptile``, ``es``); "gru": RL2's recurrent policy,
    #: ``hidden`` = tanh embedding widths, then the GRU's width (``[64, 64]``: one layer
    #: of 64, a GRU of 64).
    kind: PolicyKindName = "mlp"
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    init_log_std: float = 0.0
    #: Size of the policy's context input (CAVIA), adapted alone by ``inner.adapt: context``.
    context_dim: int = 0
    #: Std of a per-episode latent around the context (MAESN-style exploration: each
    #: episode's context input is ``context + context_noise * N(0, I)``, drawn at its
    #: start; the inner step moves the context toward the latents of the episodes that
    #: paid). 0: none. Needs ``context_dim`` >= 1 and ``outer.algo: ppo``; trainer-only
    #: for now (such a policy is not exported).
    context_noise: float = 0.0
    #: The context is a world-frame planar vector read in the base frame, rotated by the
    #: yaw of the observation's last two values (``cos, sin``; walk's ``observe_yaw``).
    #: Needs ``context_dim: 2``, ``kind: mlp``; trainer-only for now (not exported).
    rotate_context: bool = False
    #: Hidden widths of the dynamics model of ``inner.loss: dynamics`` (empty: none).
    dynamics_hidden: list[int] = field(default_factory=list)
    #: RL2 only: the GRU's reward input is standardised by a running mean and variance of
    #: the rewards seen in training (folded into the exported graph, as the observation
    #: normaliser is). Off: the reward enters raw.
    reward_norm: bool = False


@dataclass
class MetaBatchConfig:
    tasks: int = 40  #: tasks per meta-iteration (M)
    episodes: int = 20  #: episodes per task and per adaptation step (E)
    #: A task parameter with a few values (walk: "heading"): every batch holds each value
    #: in equal share (:meth:`~sim_envs.tasks.TaskFamily.sample_balanced`). "": a plain draw.
    balance: str = ""


@dataclass
class InnerConfig:
    steps: int = 1  #: inner policy-gradient steps (K)
    lr: float = 0.1
    #: "lvc" (ProMP), "dice", "vpg" (plain log pi * A) or "dynamics" (self-supervised:
    #: the dynamics model's prediction error; with ``adapt: context``,
    #: ``policy.dynamics_hidden`` and ``outer.algo: ppo``)
    loss: InnerLossName = "lvc"
    first_order: bool = False  #: FOMAML: drop second-order terms
    meta_sgd: bool = False  #: learn one inner learning rate per parameter
    clip: float = math.inf  #: likelihood-ratio clip of the inner surrogate (inf = none)
    #: "all": every policy parameter; "context": only the policy's context input (CAVIA;
    #: needs ``policy.context_dim`` > 0), the other rates are 0.
    adapt: InnerAdaptName = "all"
    #: ``inner.loss: dynamics``: the weight of the dynamics model's loss on the post-update
    #: data (at the adapted context) in the outer objective, the model's direct training
    #: signal (0: it learns only through the second-order path).
    dynamics_coef: float = 1.0

    @property
    def loss_clip(self) -> float:
        """The clip the inner loss takes: ``clip`` for "lvc", inf for the losses without one."""
        return self.clip if self.loss == "lvc" else math.inf


@dataclass
class OuterConfig:
    #: "ppo" (PPO-MAML / ProMP), "reptile", "es" (ES-MAML) or "rl2" (RL2: memory)
    algo: OuterAlgoName = "ppo"
    lr: float = 1e-3
    epochs: int = 5  #: Adam steps per meta-batch (no resampling); Reptile: inner PPO steps
    clip: float = 0.3
    kl_target: float = 0.01
    eta: float = 1.0  #: initial KL-penalty coefficient
    adaptive_eta: bool = True
    reptile_lr: float = 0.1  #: Reptile's step toward the tasks' adapted parameters
    es_sigma: float = 0.02  #: ES-MAML's perturbation scale (std of the noise on theta)
    #: RL2: truncated backpropagation through time, in steps of the trial (the GRU's
    #: state is detached every ``tbptt`` steps in the update).
    tbptt: int = 100
    #: RL2: Adam steps per epoch, each on an equal share of the batch's trials
    minibatches: int = 1
    #: RL2: weight of the policy's entropy (nats) subtracted from the PPO loss, against the
    #: collapse to a deterministic task-blind policy before the memory learns anything.
    entropy_coef: float = 0.0
    max_grad_norm: float = 10.0


@dataclass
class AdvantageConfig:
    gamma: float = 0.99
    lam: float = 1.0
    normalize: bool = True
    #: "linear": per-task linear feature baseline everywhere (ProMP; RL2: one fit over all
    #: trials). "mlp": the outer objective's advantages come from a value network trained
    #: across iterations (:mod:`metarobot.algos.value`; RL2: over each whole trial); the
    #: inner step keeps the linear baseline (as the device).
    baseline: BaselineName = "linear"
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
    #: "local": worker processes; "ray": the same workers as Ray actors (the ``ray`` extra)
    backend: SamplerBackendName = "local"
    #: The Ray cluster of the ray backend ("auto", "host:6379"); "": the instance the
    #: process is connected to, else a local one started for the run.
    ray_address: str = ""


@dataclass
class CurriculumConfig:
    """legged_gym-style terrain levels (:mod:`metarobot.training.curriculum`)."""

    enabled: bool = False  #: scale training tasks' difficulty by a level per terrain type
    start: float = 0.2  #: every group's first level (0: easiest, 1: the family's range)
    step: float = 0.1  #: a level's move after an iteration
    promote: float = 0.7  #: post-update success at or above which a level goes up
    demote: float = 0.4  #: post-update success below which a level goes down
    min_level: float = 0.0  #: the lowest a level goes
    #: fraction of the meta-batch given to the group with the lowest level (0: none)
    focus: float = 0.0


@dataclass
class TrainConfig:
    family: str = "reach"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: DeviceName = "auto"  #: "auto", "cpu" or "cuda"
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
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> TrainConfig:
        """Check every value's range (types are checked on construction from a dict).

        Raises ``ValueError`` naming the first key out of range and its allowed range;
        returns self. ``env_kwargs`` is only checked to be a mapping with string keys here:
        :func:`metarobot.training.trainer.env_spaces` checks that the env accepts it by building it.
        """
        _from_dict(type(self), self.to_dict())  # types, also of a config built in Python
        for key, value, ok, allowed in self._range_checks():
            if not ok:
                raise ValueError(f"invalid config: {key} = {value!r} is out of range; "
                                 f"allowed: {allowed}")
        return self

    def _range_checks(self) -> list[tuple[str, Any, bool, str]]:
        """``(key, value, in range, allowed range)`` for every key of the config."""
        from metarobot.core.policy import LOG_STD_MAX, LOG_STD_MIN
        from sim_envs.registry import FAMILY_NAMES, make_family

        p, mb, inner, outer = self.policy, self.meta_batch, self.inner, self.outer
        adv, smp, cur = self.advantages, self.sampler, self.curriculum
        # The dynamics loss adapts the context through the model, which the PPO outer
        # objective trains (its dynamics_coef term and the second-order path).
        dynamics_ok = (inner.adapt == "context" and p.context_dim >= 1
                       and bool(p.dynamics_hidden) and outer.algo == "ppo")
        rl2 = outer.algo == "rl2"
        eta_ok = math.isfinite(outer.eta) and (
            outer.eta > 0 if outer.adaptive_eta else outer.eta >= 0)
        return [
            ("family", self.family, self.family in FAMILY_NAMES, f"one of {list(FAMILY_NAMES)}"),
            ("env_kwargs", self.env_kwargs, all(isinstance(k, str) for k in self.env_kwargs),
             "a mapping with string keys (keyword arguments of the env)"),
            ("seed", self.seed, 0 <= self.seed <= MAX_SEED, f"an integer in [0, {MAX_SEED}]"),
            ("device", self.device, self.device in DEVICES, f"one of {list(DEVICES)}"),
            ("iterations", self.iterations, self.iterations >= 0, "an integer >= 0"),
            ("checkpoint_every", self.checkpoint_every, self.checkpoint_every >= 1,
             "an integer >= 1"),
            ("max_nonfinite_updates", self.max_nonfinite_updates,
             self.max_nonfinite_updates >= 0, "an integer >= 0"),
            ("policy.hidden", p.hidden, all(h >= 1 for h in p.hidden) and (
                p.kind != "gru" or len(p.hidden) >= 1),
             "a list of layer widths, each an integer >= 1 (with policy.kind: gru at least "
             "one: the last is the GRU's width)"),
            ("policy.init_log_std", p.init_log_std,
             LOG_STD_MIN <= p.init_log_std <= LOG_STD_MAX,
             f"a number in [{LOG_STD_MIN:g}, {LOG_STD_MAX:g}] (the policy's log-std clamp)"),
            ("policy.context_dim", p.context_dim, p.context_dim >= 0 and not (
                rl2 and p.context_dim), "an integer >= 0 (0 with outer.algo: rl2, whose GRU "
             "policy adapts by memory, not through a context input)"),
            ("policy.context_noise", p.context_noise, 0 <= p.context_noise < math.inf and (
                p.context_noise == 0 or (p.context_dim >= 1 and outer.algo == "ppo"
                                         and inner.loss != "dynamics")),
             "a finite number >= 0; above 0 only with policy.context_dim >= 1, "
             "outer.algo: ppo and an inner loss other than 'dynamics' (the per-episode "
             "latent is the context's exploration)"),
            ("policy.rotate_context", p.rotate_context, not p.rotate_context or (
                p.context_dim == 2 and p.kind == "mlp" and not p.dynamics_hidden
                and self.env_kwargs.get("observe_yaw") is True),
             "false unless policy.context_dim is 2 with policy.kind: mlp, no "
             "policy.dynamics_hidden (a planar world-frame context) and env_kwargs "
             "observe_yaw: true (the observation's last two values, which it rotates by)"),
            ("policy.kind", p.kind, p.kind in POLICY_KINDS and (p.kind == "gru") == rl2,
             f"one of {list(POLICY_KINDS)}: 'gru' exactly when outer.algo is 'rl2' (RL2 needs "
             "the recurrent policy; the gradient meta-learners adapt the MLP)"),
            ("policy.reward_norm", p.reward_norm, not p.reward_norm or p.kind == "gru",
             "false unless policy.kind is gru (it normalises RL2's reward input)"),
            ("policy.dynamics_hidden", p.dynamics_hidden,
             all(h >= 1 for h in p.dynamics_hidden) and (
                 not p.dynamics_hidden or inner.loss == "dynamics"),
             "a list of layer widths, each an integer >= 1; not empty only with "
             "inner.loss: dynamics (the model's only use)"),
            ("meta_batch.tasks", mb.tasks, mb.tasks >= 1, "an integer >= 1"),
            ("meta_batch.episodes", mb.episodes, mb.episodes >= 1, "an integer >= 1"),
            ("meta_batch.balance", mb.balance, not mb.balance or (
                self.family in FAMILY_NAMES
                and mb.balance in make_family(self.family).params_type.specs()),
             "'' or the name of one of the family's task parameters"),
            ("inner.steps", inner.steps, inner.steps >= 1, "an integer >= 1"),
            ("inner.lr", inner.lr, _positive(inner.lr), "a finite number > 0"),
            ("inner.loss", inner.loss, inner.loss in INNER_LOSSES and (
                inner.loss != "dynamics" or dynamics_ok),
             f"one of {list(INNER_LOSSES)} ('dynamics' needs inner.adapt: context, "
             "policy.context_dim >= 1, a model in policy.dynamics_hidden and outer.algo: "
             "ppo)"),
            ("inner.adapt", inner.adapt, inner.adapt == "all" or (
                inner.adapt == "context" and p.context_dim >= 1 and not rl2),
             f"one of {list(INNER_ADAPTS)} ('context' needs policy.context_dim >= 1; "
             "outer.algo: rl2 takes no inner step, its inner.* settings are unused)"),
            ("inner.meta_sgd", inner.meta_sgd, not (rl2 and inner.meta_sgd),
             "false with outer.algo: rl2 (it takes no inner step: no learning rates to learn)"),
            ("inner.clip", inner.clip, inner.clip > 0, "a number > 0 (inf: no clipping)"),
            ("inner.dynamics_coef", inner.dynamics_coef, 0 <= inner.dynamics_coef < math.inf,
             "a finite number >= 0"),
            ("outer.algo", outer.algo, outer.algo in OUTER_ALGOS, f"one of {list(OUTER_ALGOS)}"),
            ("outer.lr", outer.lr, _positive(outer.lr), "a finite number > 0"),
            ("outer.epochs", outer.epochs, outer.epochs >= 1, "an integer >= 1"),
            ("outer.clip", outer.clip, 0 < outer.clip < 1, "a number in (0, 1)"),
            ("outer.kl_target", outer.kl_target, _positive(outer.kl_target),
             "a finite number > 0"),
            ("outer.eta", outer.eta, eta_ok, "a finite number > 0 with outer.adaptive_eta "
             "(it is doubled and halved), else >= 0"),
            ("outer.es_sigma", outer.es_sigma, _positive(outer.es_sigma),
             "a finite number > 0"),
            ("outer.tbptt", outer.tbptt, outer.tbptt >= 1,
             "an integer >= 1 (steps between truncations of RL2's backpropagation through "
             "time; at least the trial's length E * T for full backpropagation)"),
            ("outer.minibatches", outer.minibatches,
             1 <= outer.minibatches <= self.meta_batch.tasks
             and (outer.minibatches == 1 or outer.algo == "rl2"),
             "an integer in [1, meta_batch.tasks], 1 unless outer.algo is 'rl2' (RL2 splits "
             "its trials into that many minibatches per epoch)"),
            ("outer.entropy_coef", outer.entropy_coef,
             0 <= outer.entropy_coef < math.inf and (outer.entropy_coef == 0 or rl2),
             "a finite number >= 0, and 0 unless outer.algo is 'rl2' (RL2's entropy bonus)"),
            ("outer.reptile_lr", outer.reptile_lr, 0 < outer.reptile_lr <= 1,
             "a number in (0, 1] (the fraction of the way toward the adapted parameters)"),
            ("outer.max_grad_norm", outer.max_grad_norm, outer.max_grad_norm > 0,
             "a number > 0 (inf: no clipping)"),
            ("advantages.gamma", adv.gamma, 0 < adv.gamma <= 1, "a number in (0, 1]"),
            ("advantages.lam", adv.lam, 0 <= adv.lam <= 1, "a number in [0, 1]"),
            ("advantages.baseline", adv.baseline, adv.baseline in BASELINES,
             f"one of {list(BASELINES)}"),
            ("advantages.value_hidden", adv.value_hidden, all(h >= 1 for h in adv.value_hidden),
             "a list of layer widths, each an integer >= 1"),
            ("advantages.value_lr", adv.value_lr, _positive(adv.value_lr), "a finite number > 0"),
            ("advantages.value_epochs", adv.value_epochs, adv.value_epochs >= 1,
             "an integer >= 1"),
            ("advantages.value_minibatch", adv.value_minibatch, adv.value_minibatch >= 1,
             "an integer >= 1"),
            ("sampler.num_workers", smp.num_workers, smp.num_workers >= 0,
             "an integer >= 0 (0: envs in the trainer process)"),
            ("sampler.envs_per_worker", smp.envs_per_worker, smp.envs_per_worker >= 1,
             "an integer >= 1"),
            ("sampler.backend", smp.backend, smp.backend in SAMPLER_BACKENDS and (
                smp.backend == "local" or smp.num_workers >= 1),
             f"one of {list(SAMPLER_BACKENDS)} ('ray' needs sampler.num_workers >= 1: its "
             "workers are actors)"),
            ("sampler.ray_address", smp.ray_address, smp.backend == "ray" or not smp.ray_address,
             "'' unless sampler.backend is 'ray' (the address is the ray backend's only)"),
            ("curriculum.enabled", cur.enabled,
             not cur.enabled or (self.family in FAMILY_NAMES
                                 and make_family(self.family).has_difficulty),
             "false unless the family's tasks have a difficulty (locomotion)"),
            ("curriculum.start", cur.start, cur.min_level <= cur.start <= 1,
             "a number in [curriculum.min_level, 1]"),
            ("curriculum.step", cur.step, 0 < cur.step <= 1, "a number in (0, 1]"),
            ("curriculum.promote", cur.promote, cur.demote < cur.promote <= 1,
             "a number in (curriculum.demote, 1]"),
            ("curriculum.demote", cur.demote, 0 <= cur.demote < 1, "a number in [0, 1)"),
            ("curriculum.focus", cur.focus, 0 <= cur.focus <= 1, "a number in [0, 1]"),
            ("curriculum.min_level", cur.min_level, 0 <= cur.min_level <= 1,
             "a number in [0, 1]"),
        ]


def _positive(x: float) -> bool:
    """A finite number > 0."""
    return 0 < x < math.inf


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
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config key {key!r} must be a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an int beyond float's range
            raise ValueError(f"config key {key!r} must be a number within float range, "
                             f"got {value!r}") from None
        if math.isnan(number):
            raise ValueError(f"config key {key!r} must be a number, got {value!r}")
        return number
    if origin is Literal:
        # A string switch: its type here; whether it is one of the values is a range
        # check (validate), whose message lists them.
        annotation = str
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
    unknown = sorted(str(k) for k in data if k not in names)  # YAML keys may be any type
    if unknown:
        raise ValueError(f"unknown config key(s) {[prefix + u for u in unknown]}; "
                         f"known in this section: {sorted(names)}")
    kwargs = {k: _check_type(prefix + k, v, hints[k]) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a (possibly partial) mapping."""
    return _from_dict(TrainConfig, data).validate()


def shipped_config_names() -> list[str]:
    """The names of the configs under ``assets/configs/``."""
    folder = Path(str(resources.files("assets") / "configs"))
    return sorted(p.stem for p in folder.glob("*.yaml"))


def default_config_path(name: str) -> Path:
    """The shipped YAML config ``name`` (a family, or e.g. ``reach-cpu``)."""
    path = Path(str(resources.files("assets") / "configs" / f"{name}.yaml"))
    if not path.is_file():
        raise ValueError(f"no shipped config named {name!r} and no such file; shipped: "
                         f"{shipped_config_names()}")
    return path


def _override_key_and_value(item: str) -> tuple[list[str], Any]:
    """``"a.b=1"`` -> ``(["a", "b"], 1)``; the value is parsed as YAML."""
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like key=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ValueError(f"override {item!r}: {key!r} is not a key (like inner.lr)")
    try:
        return parts, yaml.safe_load(raw)
    except yaml.YAMLError as err:
        reason = " ".join(str(err).split())
        raise ValueError(f"override {item!r}: the value is not valid YAML ({reason})") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested dict copy."""
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy
    for item in overrides:
        parts, value = _override_key_and_value(item)
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return data


#: The keys ``metarobot train --resume`` may change. They decide how long, where and
#: how fast a run goes, not what it computes: the sampler gives the same episodes for
#: any worker layout and either backend (see :mod:`metarobot.sampling.sampler`), and a
#: checkpoint loads on either device. Every other key is fixed by the run's saved config.
RESUME_SAFE_KEYS = ("iterations", "checkpoint_every", "max_nonfinite_updates", "device",
                    "sampler.num_workers", "sampler.envs_per_worker", "sampler.backend",
                    "sampler.ray_address")


def resume_config(saved: dict[str, Any], overrides: list[str]) -> TrainConfig:
    """The saved config of a run with ``overrides`` of :data:`RESUME_SAFE_KEYS` applied.

    An override of any other key raises ``ValueError`` naming it: a resumed run never
    silently ignores one, nor changes what it computes.
    """
    for item in overrides:
        key = ".".join(_override_key_and_value(item)[0])
        if key not in RESUME_SAFE_KEYS:
            raise ValueError(f"--resume cannot change {key!r} (the run continues with its "
                             f"saved config); keys it can change: {list(RESUME_SAFE_KEYS)}. "
                             "Start a new run with --run-dir to change others")
    return config_from_dict(apply_overrides(saved, overrides))


def flat_items(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"inner": {"lr": 0.1}}`` -> ``{"inner.lr": 0.1}`` (sections only, not
    ``env_kwargs``' own keys)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "env_kwargs":
            out.update(flat_items(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def overrides_between(saved: TrainConfig, wanted: TrainConfig) -> list[str]:
    """The ``key=value`` overrides that turn ``saved`` into ``wanted`` (for
    :func:`resume_config`, which refuses the keys a resume may not change)."""
    old, new = flat_items(saved.to_dict()), flat_items(wanted.to_dict())
    return [f"{key}={json.dumps(value)}" for key, value in new.items() if old[key] != value]


def load_config(path: str | Path | None = None, family: str | None = None,
                overrides: list[str] | None = None) -> TrainConfig:
    """Load a YAML config (or the family's shipped one) and apply ``overrides``."""
    if path is None:
        path = default_config_path(family or "reach")
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        reason = " ".join(str(err).split())
        raise ValueError(f"cannot read config {path}: {reason}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"config {path} must be a YAML mapping of keys to values "
                         f"(like 'family: reach'), not a {type(data).__name__}")
    if family is not None:
        data["family"] = family
    return config_from_dict(apply_overrides(data, overrides or []))


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the config as YAML, atomically (a temporary file renamed into place)."""
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    atomic_write_bytes(Path(path), lambda f: f.write(text.encode()))
