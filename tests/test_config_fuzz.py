"""Generated configs: every key is checked for type and range, errors name the key.

The allowed values below are written out independently of :mod:`metarobot.training.config`, so a
check that is missing there (or too loose, or too strict) fails here. Nothing here builds
an env or trains: every example takes microseconds.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metarobot.training.config import (
    RESUME_SAFE_KEYS,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    flat_items,
    load_config,
    resume_config,
    save_config,
)
from sim_envs.registry import FAMILY_NAMES, make_family

FUZZ = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
INF = math.inf


def _int(low: float, high: float = INF) -> tuple[str, object]:
    return "int", lambda v: low <= v <= high


def _float(ok: object) -> tuple[str, object]:
    return "float", ok


def _choice(*options: str) -> tuple[str, object]:
    return "str", lambda v: v in options


#: Every key of the config: its type and the values it allows.
SPEC: dict[str, tuple[str, object]] = {
    "family": _choice(*FAMILY_NAMES),
    "env_kwargs": ("dict", lambda v: all(isinstance(k, str) for k in v)),
    "seed": _int(0, 2**63 - 1),
    "device": _choice("auto", "cpu", "cuda"),
    "iterations": _int(0),
    "checkpoint_every": _int(1),
    "max_nonfinite_updates": _int(0),
    "deterministic": ("bool", None),
    "policy.kind": _choice("mlp", "gru"),  # gru: exactly with outer.algo rl2
    "policy.hidden": ("widths", None),
    "policy.init_log_std": _float(lambda v: -5 <= v <= 2),
    "policy.context_dim": _int(0),
    "policy.context_noise": _float(lambda v: 0 <= v < INF),  # > 0: see below
    "policy.rotate_context": ("bool", None),  # true: with policy.context_dim 2
    "policy.dynamics_hidden": ("widths", None),  # not empty: with inner.loss dynamics
    "policy.reward_norm": ("bool", None),  # true: with policy.kind gru
    "meta_batch.tasks": _int(1),
    "meta_batch.episodes": _int(1),
    # "" or a task parameter of the config's family (base() is reach: see below).
    "meta_batch.balance": _choice("", *sorted({name for family in FAMILY_NAMES for name in
                                               make_family(family).params_type.specs()})),
    "inner.steps": _int(1),
    "inner.lr": _float(lambda v: 0 < v < INF),
    "inner.loss": _choice("lvc", "dice", "vpg", "dynamics"),  # dynamics: see below
    "inner.first_order": ("bool", None),
    "inner.meta_sgd": ("bool", None),
    "inner.clip": _float(lambda v: v > 0),
    "inner.adapt": _choice("all", "context"),  # context: with policy.context_dim >= 1
    "inner.dynamics_coef": _float(lambda v: 0 <= v < INF),
    "outer.algo": _choice("ppo", "reptile", "es", "rl2"),  # rl2: with policy.kind gru
    "outer.lr": _float(lambda v: 0 < v < INF),
    "outer.epochs": _int(1),
    "outer.clip": _float(lambda v: 0 < v < 1),
    "outer.kl_target": _float(lambda v: 0 < v < INF),
    "outer.eta": _float(lambda v: 0 < v < INF),  # adaptive_eta is on in the base config
    "outer.adaptive_eta": ("bool", None),
    "outer.reptile_lr": _float(lambda v: 0 < v <= 1),
    "outer.es_sigma": _float(lambda v: 0 < v < INF),
    "outer.tbptt": _int(1),
    "outer.minibatches": _int(1),  # and 1 unless outer.algo is rl2: see below
    "outer.entropy_coef": _float(lambda v: 0 <= v < INF),  # and 0 unless rl2: see below
    "outer.max_grad_norm": _float(lambda v: v > 0),
    "advantages.gamma": _float(lambda v: 0 < v <= 1),
    "advantages.lam": _float(lambda v: 0 <= v <= 1),
    "advantages.normalize": ("bool", None),
    "advantages.baseline": _choice("linear", "mlp"),
    "advantages.value_hidden": ("widths", None),
    "advantages.value_lr": _float(lambda v: 0 < v < INF),
    "advantages.value_epochs": _int(1),
    "advantages.value_minibatch": _int(1),
    "advantages.value_task_features": ("bool", None),
    "sampler.num_workers": _int(0),
    "sampler.envs_per_worker": _int(1),
    "sampler.backend": _choice("local", "ray"),  # ray: with sampler.num_workers >= 1
    # Any string with sampler.backend ray; base() has local, which takes only "".
    "sampler.ray_address": _choice(""),
    # The curriculum's ranges alone; their order (min_level <= start, demote < promote) and
    # enabled: true (only a family with a difficulty) are the single-key test's cases.
    "curriculum.enabled": ("bool", None),
    "curriculum.start": _float(lambda v: 0 <= v <= 1),
    "curriculum.step": _float(lambda v: 0 < v <= 1),
    "curriculum.promote": _float(lambda v: 0 < v <= 1),
    "curriculum.demote": _float(lambda v: 0 <= v < 1),
    "curriculum.min_level": _float(lambda v: 0 <= v <= 1),
    "curriculum.focus": _float(lambda v: 0 <= v <= 1),
}
#: Strings a float key reads as numbers (YAML 1.1 leaves "1e-6" and "inf" strings).
NUMERIC_STRINGS = {"1e-6": 1e-6, "2E-2": 0.02, "inf": INF, ".inf": INF, "-inf": -INF,
                   "0.5": 0.5, "-3": -3.0}

words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-", max_size=8)
scalars = (st.none() | st.booleans() | st.integers(-10, 10) | st.integers()
           | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | words | st.sampled_from(sorted(NUMERIC_STRINGS) + ["nan", "fast"])
           | st.sampled_from(["reach", "grasp", "cpu", "cuda", "lvc", "reptile", "mlp", "gru",
                             "rl2"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(words | st.integers(), inner, max_size=3),
                      max_leaves=6)


def expected_value(kind: str, ok: object, value: object) -> tuple[bool, object]:
    """Whether ``value`` is allowed for a key of ``kind`` / ``ok``, and what it becomes."""
    if kind == "bool":
        return type(value) is bool, value
    if kind == "int":
        return type(value) is int and ok(value), value
    if kind == "str":
        return type(value) is str and ok(value), value
    if kind == "dict":
        return isinstance(value, dict) and ok(value), value
    if kind == "widths":
        good = isinstance(value, list) and all(type(h) is int and h >= 1 for h in value)
        return good, value
    # float: an int or float (not bool, not NaN, within float range) or a numeric string
    if isinstance(value, str):
        if value not in NUMERIC_STRINGS:
            return False, None
        value = NUMERIC_STRINGS[value]
    if type(value) not in (int, float) or (type(value) is int and abs(value) > 1e308):
        return False, None
    number = float(value)
    return (not math.isnan(number)) and ok(number), number


def base() -> dict:
    return TrainConfig().to_dict()


def with_key(data: dict, key: str, value: object) -> dict:
    node = data
    *sections, last = key.split(".")
    for part in sections:
        node = node[part]
    node[last] = value
    return data


def test_the_spec_covers_every_config_key():
    assert set(SPEC) == set(flat_items(base()))


@FUZZ
@given(key=st.sampled_from(sorted(SPEC)), value=values)
def test_one_key_is_accepted_exactly_when_allowed_and_errors_name_it(key, value):
    kind, ok = SPEC[key]
    allowed, converted = expected_value(kind, ok, value)
    if key == "inner.adapt" and value == "context":
        allowed = False  # it needs policy.context_dim >= 1, and base() has 0
    if (key == "inner.loss" and value == "dynamics") or (
            key == "policy.dynamics_hidden" and allowed and value):
        allowed = False  # the dynamics loss and its model need each other and a context
    if key == "policy.context_noise" and allowed and converted != 0:
        allowed = False  # a per-episode latent needs a context, and base() has none
    if key == "policy.rotate_context" and value is True:
        allowed = False  # a world-frame context needs a 2-number context, and base() has none
    if key == "outer.minibatches" and allowed and converted != 1:
        allowed = False  # minibatches are RL2's, and base() is PPO-MAML
    if key == "meta_batch.balance" and allowed and value:
        allowed = value in make_family("reach").params_type.specs()
    if key == "outer.entropy_coef" and allowed and converted != 0:
        allowed = False  # the entropy bonus is RL2's
    if (key, value) in (("policy.kind", "gru"), ("outer.algo", "rl2"),
                        ("policy.reward_norm", True)):
        allowed = False  # RL2, its GRU and the GRU's reward input go together; base() is MLP
    cur = base()["curriculum"]
    if allowed and ((key == "curriculum.enabled" and value)  # base() is reach: no difficulty
                    or (key == "curriculum.min_level" and converted > cur["start"])
                    or (key == "curriculum.promote" and converted <= cur["demote"])
                    or (key == "curriculum.demote" and converted >= cur["promote"])):
        allowed = False  # the error names the key (the other key's range mentions it)
    data = with_key(base(), key, value)
    if allowed:
        cfg = config_from_dict(data)
        assert flat_items(cfg.to_dict())[key] == converted
    else:
        with pytest.raises(ValueError) as info:
            config_from_dict(data)
        assert key in str(info.value)
        assert "\n" not in str(info.value)


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(sorted(SPEC)), values, min_size=2,
                               max_size=6))
def test_many_keys_give_a_valid_config_or_a_value_error(tmp_path_factory, changes):
    data = base()
    for key, value in changes.items():
        with_key(data, key, value)
    try:
        cfg = config_from_dict(data)
    except ValueError as err:
        assert any(key in str(err) for key in changes), err
        return
    for key, value in changes.items():  # every accepted value is an allowed one
        kind, ok = SPEC[key]
        if key == "sampler.ray_address" and cfg.sampler.backend == "ray":
            assert type(value) is str, value
        elif key != "outer.eta" or cfg.outer.adaptive_eta:
            assert expected_value(kind, ok, value)[0], (key, value)
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"  # saved and loaded unchanged
    save_config(cfg, path)
    assert load_config(path) == cfg


@FUZZ
@given(document=values, family=st.none() | st.sampled_from(["reach", "walk"]),
       overrides=st.lists(st.sampled_from(["iterations=3", "inner.lr=0.05",
                                           "policy.hidden=[8]"]), max_size=2))
def test_any_yaml_document_loads_or_gives_a_value_error(tmp_path_factory, document, family,
                                                         overrides):
    path = tmp_path_factory.mktemp("yaml") / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        cfg = load_config(path, family=family, overrides=overrides)
    except ValueError as err:
        if document is not None and not isinstance(document, dict):
            assert "must be a YAML mapping" in str(err)
        return
    assert isinstance(document, dict) or document is None
    assert family is None or cfg.family == family


@pytest.mark.parametrize("document", ["- 1\n- 2\n", "42\n", "just words\n", "[reach]\n"])
def test_a_config_file_that_is_a_list_or_a_scalar_is_a_clear_error(tmp_path, document):
    path = tmp_path / "config.yaml"
    path.write_text(document)
    for kwargs in ({}, {"family": "reach"}, {"overrides": ["inner.lr=0.05"]}):
        with pytest.raises(ValueError, match="must be a YAML mapping"):
            load_config(path, **kwargs)


@FUZZ
@given(item=st.text(max_size=30))
def test_any_override_string_applies_or_gives_a_value_error(item):
    try:
        data = apply_overrides(base(), [item])
        config_from_dict(data)
    except ValueError as err:
        assert "\n" not in str(err)


@FUZZ
@given(key=st.sampled_from(sorted(SPEC)), value=values)
def test_resume_changes_only_the_safe_keys(key, value):
    saved = base()
    item = f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"
    if yaml.safe_load(item.split("=", 1)[1]) != value:  # not representable as one line
        return
    if key not in RESUME_SAFE_KEYS:
        with pytest.raises(ValueError, match=f"--resume cannot change '{key}'"):
            resume_config(saved, [item])
        return
    kind, ok = SPEC[key]
    allowed, converted = expected_value(kind, ok, value)
    if allowed:
        cfg = resume_config(saved, [item])
        assert flat_items(cfg.to_dict())[key] == converted
        unchanged = {k: v for k, v in flat_items(cfg.to_dict()).items() if k != key}
        assert unchanged == {k: v for k, v in flat_items(saved).items() if k != key}
    else:
        with pytest.raises(ValueError, match=key):
            resume_config(saved, [item])


def test_shipped_configs_satisfy_the_spec():
    folder = Path(__file__).resolve().parents[1] / "assets" / "configs"
    for path in sorted(folder.glob("*.yaml")):
        for key, value in flat_items(load_config(path).to_dict()).items():
            kind, ok = SPEC[key]
            assert expected_value(kind, ok, value)[0], (path.name, key, value)
