"""Fuzzed bundles: whatever is wrong with a manifest, graph or parameter file, loading
gives ``BundleError`` (which the CLI turns into one line and exit 2), never another
exception.

The manifest cases are generated (``hypothesis``, derandomised so CI is reproducible):
any node of a real bundle's manifest is replaced by an arbitrary JSON value, deleted, or
given an unknown key. The file cases replace a graph or a parameter file with other
content while keeping the manifest's size and hash consistent, so the content itself
must be refused.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from deploy import AdaptivePolicy, BundleError, load_bundle
from metarobot.core.policy import GaussianMLPPolicy
from metarobot.export.bundle import export_bundle

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6)
    | st.sampled_from(["inf", "-inf", "nan", "adapt.onnx", "../params.npy", "1"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=6)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A tiny valid bundle (O = 3, A = 2, one hidden layer of 4, one adapt graph)."""
    model = GaussianMLPPolicy(3, 2, (4,))
    return export_bundle(
        model.eval(), model.init_params(), tmp_path_factory.mktemp("fuzz") / "bundle",
        family="reach", env_id="sim_envs/Reach-v0",
        observation_space=gymnasium.spaces.Box(-np.inf, np.inf, (3,), np.float32),
        action_space=gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32),
        inner_config={"loss": "lvc", "lr": 0.1, "clip": 0.2, "steps": 1, "gamma": 0.99,
                      "lam": 0.95, "baseline": "linear_feature"},
        adapt_steps_options=(1,), safety={"max_kl": 2.0})


@pytest.fixture()
def workdir(bundle, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("case") / "bundle"
    shutil.copytree(bundle, target)
    return target


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys/indices) into a JSON tree, the root included."""
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += paths(value, (*prefix, index))
    return out


def mutate(manifest: Any, path: tuple, op: str, value: Any) -> Any:
    """``manifest`` with the node at ``path`` replaced by ``value``, deleted, or (for an
    object) given an unknown key ``"zz_garbage"``."""
    if not path:
        return value
    result = copy.deepcopy(manifest)
    parent = result
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if op == "delete":
        del parent[last]
    elif op == "add_key" and isinstance(parent[last], dict):
        parent[last]["zz_garbage"] = value
    else:
        parent[last] = value
    return result


def expect_bundle_error(root: Path) -> None:
    """Both loaders refuse the bundle with BundleError (another exception fails the test)."""
    with pytest.raises(BundleError):
        load_bundle(root)
    with pytest.raises(BundleError):
        AdaptivePolicy.load(root)


@FUZZ
@given(data=st.data())
def test_fuzzed_manifests_give_bundle_error(bundle, workdir, data):
    original = json.loads((bundle / "manifest.json").read_text())
    path = data.draw(st.sampled_from(paths(original)), label="path")
    op = data.draw(st.sampled_from(["replace", "delete", "add_key"]) if path
                   else st.just("replace"), label="op")
    value = data.draw(JSON_VALUES, label="value")
    mutated = mutate(original, path, op, value)
    assume(mutated != original)
    (workdir / "manifest.json").write_text(json.dumps(mutated))
    expect_bundle_error(workdir)


@FUZZ
@given(text=st.text(max_size=200))
def test_manifest_that_is_not_json_or_not_an_object(workdir, text):
    (workdir / "manifest.json").write_text(text, encoding="utf-8")
    expect_bundle_error(workdir)


def replace_file(root: Path, name: str, data: bytes) -> None:
    """Write ``data`` as ``name`` and make the manifest's size and hash agree with it."""
    (root / name).write_bytes(data)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (root / "manifest.json").write_text(json.dumps(manifest))


@FUZZ
@given(name=st.sampled_from(["policy.onnx", "adapt.onnx", "params.npy"]),
       data=st.binary(max_size=300))
def test_random_file_contents_give_bundle_error(bundle, workdir, name, data):
    original = (bundle / name).read_bytes()
    assume(data != original)
    # Random bytes, or the real file cut short: both with a consistent manifest entry.
    replace_file(workdir, name, data)
    expect_bundle_error(workdir)
    replace_file(workdir, name, original[: len(original) * len(data) // 301])
    expect_bundle_error(workdir)


def npy_bytes(array: Any, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, **kwargs)
    return buffer.getvalue()


def test_malformed_parameter_files_give_bundle_error(bundle, workdir):
    params = np.load(bundle / "params.npy")
    npz = io.BytesIO()
    np.savez(npz, params=params)
    cases = {
        "float64": npy_bytes(params.astype(np.float64)),
        "shorter": npy_bytes(params[:-1]),
        "2-D": npy_bytes(params[None]),
        "NaN": npy_bytes(np.where(np.arange(params.size) == 3, np.nan, params)
                         .astype(np.float32)),
        "object (pickled)": npy_bytes(np.array([params], dtype=object), allow_pickle=True),
        "npz archive": npz.getvalue(),
    }
    for case, data in cases.items():
        replace_file(workdir, "params.npy", data)
        with pytest.raises(BundleError):
            load_bundle(workdir)
            pytest.fail(f"a params.npy that is {case} was accepted")
    replace_file(workdir, "params.npy", npy_bytes(params + 1))  # valid, other values
    with pytest.raises(BundleError, match="do not match the metadata's SHA-256"):
        load_bundle(workdir)


def test_graphs_are_checked_against_the_metadata(bundle, workdir):
    """Swapped graphs, a graph of other shapes or dtype: each names what it has and what
    the metadata implies."""
    replace_file(workdir, "adapt.onnx", (bundle / "policy.onnx").read_bytes())
    with pytest.raises(BundleError, match=r"adapt.onnx: inputs are \[obs"):
        load_bundle(workdir)
    replace_file(workdir, "adapt.onnx", (bundle / "adapt.onnx").read_bytes())

    def graph(obs_dim: int, elem: int = onnx.TensorProto.FLOAT) -> bytes:
        """A policy-like graph (obs [N, obs_dim] -> two outputs) with the real metadata."""
        h = onnx.helper
        nodes = [h.make_node("MatMul", ["obs", "w"], ["action_mean"]),
                 h.make_node("Identity", ["action_mean"], ["log_std"])]
        w = onnx.numpy_helper.from_array(
            np.zeros((obs_dim, 2), onnx.helper.tensor_dtype_to_np_dtype(elem)), "w")
        p = onnx.numpy_helper.from_array(np.load(bundle / "params.npy"), "params")
        g = h.make_graph(nodes, "g", [h.make_tensor_value_info("obs", elem, ["N", obs_dim]),
                                      h.make_tensor_value_info("params", 1, [p.dims[0]])],
                         [h.make_tensor_value_info("action_mean", elem, ["N", 2]),
                          h.make_tensor_value_info("log_std", elem, ["N", 2])], [w, p])
        model = h.make_model(g, opset_imports=[h.make_opsetid("", 18)])
        model.ir_version = 8
        source = onnx.load(bundle / "policy.onnx")
        model.metadata_props.extend(source.metadata_props)
        return model.SerializeToString()

    replace_file(workdir, "policy.onnx", graph(3))
    load_bundle(workdir)  # the right signature passes: the checks are not blanket refusals
    replace_file(workdir, "policy.onnx", graph(4))
    with pytest.raises(BundleError, match=r"policy.onnx: inputs are \[obs: tensor\(float\) "
                                          r"\['N', 4\]\].*\['N', 3\]"):
        load_bundle(workdir)
    replace_file(workdir, "policy.onnx", graph(3, onnx.TensorProto.DOUBLE))
    with pytest.raises(BundleError, match=r"tensor\(double\)"):
        load_bundle(workdir)


@pytest.mark.parametrize("section, key, value, message", [
    ("inner", "lr", 0.0, r"inner lr must be in \(0.0"),
    ("inner", "lr", 1e39, "not a finite float32"),
    ("inner", "clip", -1.0, "inner clip"),
    ("inner", "gamma", 1.5, "inner gamma"),
    ("inner", "lam", -0.1, "inner lam"),
    ("inner", "steps", 0, "inner steps"),
    ("inner", "steps", 2.0, "inner steps must be an integer"),
    ("inner", "normalize", 1, "normalize must be a boolean"),
    ("safety", "max_kl", -1.0, "safety max_kl"),
    ("safety", "trial_episodes", 1.5, "safety trial_episodes must be an integer"),
    ("safety", "worse_margin", "nan", "safety worse_margin"),
    ("safety", "max_update_norm", True, "safety max_update_norm"),
])
def test_inner_step_and_safety_values_are_range_checked(workdir, section, key, value, message):
    manifest = json.loads((workdir / "manifest.json").read_text())
    manifest["metadata"][section][key] = value
    (workdir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        load_bundle(workdir)


def test_the_issue_cases_name_the_problem(workdir):
    """Issue 19's examples: a normalizer that is not a mapping, a non-integer shape."""
    manifest = json.loads((workdir / "manifest.json").read_text())
    for edit, message in (
            (lambda m: m["metadata"].update(normalizer="mean"), "'normalizer' must be a JSON"),
            (lambda m: m["metadata"]["observation_space"].update(shape=[2.5]),
             "shape\\[0\\] must be an integer"),
            (lambda m: m["metadata"]["params"]["layout"]["shapes"][0].__setitem__(0, "4"),
             "parameter layout dim must be an integer"),
            (lambda m: m.update(extra=1), r"unknown keys \['extra'\]")):
        broken = copy.deepcopy(manifest)
        edit(broken)
        (workdir / "manifest.json").write_text(json.dumps(broken))
        with pytest.raises(BundleError, match=message):
            load_bundle(workdir)
