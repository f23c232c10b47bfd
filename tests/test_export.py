"""ONNX export: graphs agree with torch, the gradient is right, metadata round-trips."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import stat

import gymnasium
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from deploy.bundle import METADATA_KEY, decode_float, load_bundle
from metarobot.core.inner import InnerBatch, inner_steps_flat
from metarobot.core.policy import GaussianMLPPolicy, ParamLayout, log_prob, policy_forward
from metarobot.export.bundle import export_bundle
from metarobot.export.graphs import export_adapt_graph

OBS_DIM, ACT_DIM = 7, 3
LR = 0.0123456789012345678  # many digits: the metadata must keep them all
CLIP = 0.2


def make_policy(seed: int, obs_dim: int = OBS_DIM, act_dim: int = ACT_DIM,
                hidden: tuple[int, ...] = (32, 32)):
    """A policy with a non-trivial normaliser and parameters away from their init."""
    gen = torch.Generator().manual_seed(seed)
    model = GaussianMLPPolicy(obs_dim, act_dim, hidden)
    model.set_normalizer(torch.randn(obs_dim, generator=gen),
                         torch.rand(obs_dim, generator=gen) * 3 + 0.1)
    params = {k: (v + 0.3 * torch.randn(v.shape, generator=gen)).detach()
              for k, v in model.init_params().items()}
    return model.eval(), params


def spaces(obs_dim: int = OBS_DIM, act_dim: int = ACT_DIM):
    return (gymnasium.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32),
            gymnasium.spaces.Box(-1.0, 1.0, (act_dim,), np.float32))


def inner_config(lr):
    return {"loss": "lvc", "lr": lr, "clip": CLIP, "steps": 1, "gamma": 0.99, "lam": 0.95,
            "baseline": "linear_feature"}


@pytest.fixture(scope="module")
def scalar_bundle(tmp_path_factory):
    model, params = make_policy(0)
    obs_space, act_space = spaces()
    out = export_bundle(model, params, tmp_path_factory.mktemp("b") / "scalar", family="reach",
                        env_id="sim_envs/Reach-v0", observation_space=obs_space,
                        action_space=act_space, inner_config=inner_config(LR),
                        adapt_steps_options=(1, 2, 3))
    return model, params, out


@pytest.fixture(scope="module")
def meta_sgd_bundle(tmp_path_factory):
    model, params = make_policy(1)
    gen = torch.Generator().manual_seed(2)
    rates = {k: torch.rand(v.shape, generator=gen) * 0.05 + 0.001 for k, v in params.items()}
    obs_space, act_space = spaces()
    out = export_bundle(model, params, tmp_path_factory.mktemp("b") / "metasgd",
                        family="reach", env_id="sim_envs/Reach-v0",
                        observation_space=obs_space, action_space=act_space,
                        inner_config=inner_config(rates), adapt_steps_options=(1, 2, 3))
    return model, params, rates, out


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_policy_matches_torch(scalar_bundle):
    model, params, out = scalar_bundle
    layout = ParamLayout.of(params)
    sess = session(out / "policy.onnx")
    gen = torch.Generator().manual_seed(3)
    other = {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in params.items()}
    for batch in (1, 7, 256):
        # Large observations also exercise the normaliser's +-10 clip inside the graph.
        obs = torch.randn(batch, OBS_DIM, generator=gen) * 20
        for p, feeds in ((params, {}), (other, {"params": layout.flatten(other).numpy()})):
            with torch.no_grad():
                want_mean, want_log_std = policy_forward(model, p, obs)
            mean, log_std = sess.run(None, {"obs": obs.numpy(), **feeds})
            assert mean.shape == log_std.shape == (batch, ACT_DIM)
            np.testing.assert_allclose(mean, want_mean.numpy(), atol=1e-5, rtol=0)
            np.testing.assert_allclose(log_std, want_log_std.numpy(), atol=1e-5, rtol=0)
    # Omitting params means the meta-learned ones: those differ from `other`.
    assert not np.allclose(sess.run(None, {"obs": obs.numpy()})[0],
                           sess.run(None, {"obs": obs.numpy(),
                                           "params": layout.flatten(other).numpy()})[0])


def adapt_data(model, params, n: int, seed: int):
    """Random adaptation data with old_logp shifted so ratios leave [1 - c, 1 + c]."""
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, model.obs_dim, generator=gen)
    act = torch.randn(n, model.act_dim, generator=gen)
    adv = torch.randn(n, generator=gen)
    with torch.no_grad():
        logp = log_prob(model, params, obs, act)
    old_logp = logp + 0.5 * torch.randn(n, generator=gen)
    weight = (torch.rand(n, generator=gen) > 0.1).float()
    weight[0] = 1.0
    return InnerBatch(obs, act, adv, old_logp, weight), torch.exp(logp - old_logp)


@pytest.mark.parametrize("lr_kind", ["scalar", "per_parameter"])
def test_adapt_graphs_match_torch(lr_kind, scalar_bundle, meta_sgd_bundle):
    if lr_kind == "scalar":
        model, params, out = scalar_bundle
        lr = torch.tensor(LR)
    else:
        model, params, rates, out = meta_sgd_bundle
        lr = ParamLayout.of(params).flatten(rates)
        assert np.array_equal(np.load(out / "lr.npy"), lr.numpy())
    layout = ParamLayout.of(params)
    flat = layout.flatten(params)
    for steps, name in ((1, "adapt.onnx"), (2, "adapt_k2.onnx"), (3, "adapt_k3.onnx")):
        sess = session(out / name)
        assert [i.name for i in sess.get_inputs()] == ["params", "obs", "act", "adv", "old_logp",
                                                       "weight", "lr", "clip"]
        assert list(sess.get_inputs()[6].shape) == list(lr.shape)
        for n in (1, 37, 1000):
            batch, ratio = adapt_data(model, params, n, seed=10 * n + steps)
            if n > 1:  # both clip branches are taken by the min(...) of the surrogate
                assert bool(((ratio > 1 + CLIP) & (batch.adv > 0)).any())
                assert bool(((ratio < 1 - CLIP) & (batch.adv < 0)).any())
            clip = torch.tensor(CLIP)
            want = inner_steps_flat(model, layout, flat, batch, lr, clip, steps)
            feeds = {"params": flat.numpy(), "obs": batch.obs.numpy(), "act": batch.act.numpy(),
                     "adv": batch.adv.numpy(), "old_logp": batch.old_logp.numpy(),
                     "weight": batch.weight.numpy(), "lr": lr.numpy(), "clip": clip.numpy()}
            got = sess.run(None, feeds)
            assert got[0].shape == (layout.size,)
            for g, w in zip(got, want):
                np.testing.assert_allclose(g, w.detach().numpy(), atol=1e-5, rtol=0)
            if n > 1:  # (one sample may sit on a clipped branch: zero gradient)
                assert np.abs(got[0] - flat.numpy()).max() > 1e-4  # the step moved them


def test_adapt_graph_without_clip_matches_torch(scalar_bundle):
    """clip = inf (the trainer's default: no clipping) flows through the graph."""
    model, params, out = scalar_bundle
    layout = ParamLayout.of(params)
    flat = layout.flatten(params)
    batch, _ = adapt_data(model, params, 50, seed=5)
    want = inner_steps_flat(model, layout, flat, batch, torch.tensor(LR),
                            torch.tensor(math.inf), 2)
    got = session(out / "adapt_k2.onnx").run(None, {
        "params": flat.numpy(), **{k: v.numpy() for k, v in batch._asdict().items()},
        "lr": np.asarray(LR, np.float32), "clip": np.asarray(np.inf, np.float32)})
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.detach().numpy(), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- gradient (float64)
def numpy_inner_loss(flat, layout, normalizer, obs, act, adv, old_logp, weight, clip):
    """The inner LVC loss written independently in numpy float64 (for finite differences)."""
    p = {n: flat[o:o + math.prod(s)].reshape(s)
         for n, o, s in zip(layout.names, layout.offsets, layout.shapes)}
    mean_obs, var_obs = normalizer
    h = np.clip((obs - mean_obs) / np.sqrt(var_obs + 1e-8), -10, 10)
    layers = sorted({int(re.match(r"mean_net\.(\d+)\.", n).group(1))
                     for n in p if n.startswith("mean_net.")})
    for i, idx in enumerate(layers):
        h = h @ p[f"mean_net.{idx}.weight"].T + p[f"mean_net.{idx}.bias"]
        if i < len(layers) - 1:
            h = np.tanh(h)
    log_std = np.clip(p["log_std"], -5.0, 2.0)
    z = (act - h) * np.exp(-log_std)
    logp = (-0.5 * z ** 2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
    ratio = np.exp(logp - old_logp)
    surrogate = np.minimum(ratio * adv, np.clip(ratio, 1 - clip, 1 + clip) * adv)
    return -(weight * surrogate).sum() / weight.sum(), ratio


def test_exported_gradient_matches_finite_differences(tmp_path):
    """(params - new_params) / lr from a float64 adapt graph equals central finite
    differences of the inner loss computed independently in numpy."""
    model, params = make_policy(4, obs_dim=4, act_dim=2, hidden=(6,))
    model = model.double()
    params = {k: v.double() for k, v in params.items()}
    layout = ParamLayout.of(params)
    proto = export_adapt_graph(model, layout, steps=1, per_parameter_lr=False,
                               dtype=torch.float64)
    onnx.save(proto, tmp_path / "adapt64.onnx")
    sess = session(tmp_path / "adapt64.onnx")
    batch, _ = adapt_data(model, params, 60, seed=6)
    data = {k: v.double().numpy() for k, v in batch._asdict().items()}
    flat = layout.flatten(params).numpy()
    lr, clip = 0.5, 0.2
    new, loss, kl = sess.run(None, {"params": flat, **data, "lr": np.asarray(lr),
                                    "clip": np.asarray(clip)})
    assert new.dtype == np.float64
    grad_graph = (flat - new) / lr

    normalizer = (model.obs_mean.numpy(), model.obs_var.numpy())
    args = (layout, normalizer, data["obs"], data["act"], data["adv"], data["old_logp"],
            data["weight"], clip)
    loss_np, ratio = numpy_inner_loss(flat, *args)
    # Not 1e-15: the exporter stores Python-float constants of the graph (here
    # 0.5 * log(2 pi)) as float32 values, which shifts log-probs by ~2e-8 per action dim.
    np.testing.assert_allclose(loss, loss_np, rtol=1e-7, atol=0)
    assert ((ratio > 1 + clip) | (ratio < 1 - clip)).sum() >= 5  # clipped terms present
    h = 1e-6
    grad_fd = np.empty_like(flat)
    for i in range(flat.size):
        e = np.zeros_like(flat)
        e[i] = h
        grad_fd[i] = (numpy_inner_loss(flat + e, *args)[0]
                      - numpy_inner_loss(flat - e, *args)[0]) / (2 * h)
    assert np.abs(grad_fd).max() > 1e-3  # a real gradient, not ~0
    np.testing.assert_allclose(grad_graph, grad_fd, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------- metadata and format
def all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from all_nodes(attr.g)
            for sub in attr.graphs:
                yield from all_nodes(sub)


def test_metadata_round_trip(scalar_bundle):
    model, params, out = scalar_bundle
    manifest = json.loads((out / "manifest.json").read_text())
    layout = ParamLayout.of(params)
    flat = layout.flatten(params).numpy().astype("<f4")
    models = ["policy.onnx", "adapt.onnx", "adapt_k2.onnx", "adapt_k3.onnx"]
    for name in models:
        proto = onnx.load(out / name)
        props = {p.key: p.value for p in proto.metadata_props}
        assert props["model_author"] == "metarobot"
        assert props["model_license"] == "MIT"
        meta = json.loads(props[METADATA_KEY])
        assert meta == manifest["metadata"]
        assert meta["opset"] == next(o.version for o in proto.opset_import if o.domain == "")
    meta = manifest["metadata"]
    assert meta["format_version"] == manifest["format_version"] == 1
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["versions"]["onnx"] == onnx.__version__
    assert meta["family"] == "reach" and meta["env_id"] == "sim_envs/Reach-v0"
    # Full precision: these compare exactly, not approximately.
    assert meta["inner"]["lr"] == LR and meta["inner"]["gamma"] == 0.99
    assert meta["inner"]["lam"] == 0.95 and meta["inner"]["clip"] == CLIP
    assert meta["inner"]["loss"] == "lvc" and meta["inner"]["steps"] == 1
    assert np.array_equal(np.float32(meta["normalizer"]["mean"]), model.obs_mean.numpy())
    assert np.array_equal(np.float32(meta["normalizer"]["var"]), model.obs_var.numpy())
    assert meta["normalizer"]["folded"] is True
    assert [decode_float(v) for v in meta["observation_space"]["high"]] == [math.inf] * OBS_DIM
    assert meta["action_space"] == {"shape": [ACT_DIM], "dtype": "float32",
                                    "low": [-1.0] * ACT_DIM, "high": [1.0] * ACT_DIM}
    assert meta["params"]["layout"] == layout.to_dict()
    sizes = [math.prod(s) for s in meta["params"]["layout"]["shapes"]]
    assert sum(sizes) == meta["params"]["layout"]["size"] == flat.size
    assert meta["params"]["sha256"] == hashlib.sha256(flat.tobytes()).hexdigest()
    assert np.array_equal(np.load(out / "params.npy"), flat)
    assert meta["models"]["adapt"] == {"1": "adapt.onnx", "2": "adapt_k2.onnx",
                                       "3": "adapt_k3.onnx"}
    # Manifest: every file with its true size and hash, nothing else.
    files = sorted(p.name for p in out.iterdir() if p.name != "manifest.json")
    assert sorted(manifest["files"]) == files
    for name, entry in manifest["files"].items():
        data = (out / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    bundle = load_bundle(out, family="reach")
    assert bundle.lr == np.float32(LR) and bundle.clip == CLIP


def test_only_standard_onnx_operators(scalar_bundle, meta_sgd_bundle):
    for out in (scalar_bundle[-1], meta_sgd_bundle[-1]):
        for path in sorted(out.glob("*.onnx")):
            proto = onnx.load(path)
            nodes = list(all_nodes(proto.graph))
            nodes += [n for f in proto.functions for n in f.node]
            assert len(nodes) > 5
            domains = {n.domain for n in nodes}
            assert domains <= {"", "ai.onnx"}, (path.name, domains)
            onnx.checker.check_model(proto, full_check=True)


def test_export_rejects_bad_input(tmp_path):
    model, params = make_policy(7)
    obs_space, act_space = spaces()
    kwargs = {"family": "reach", "env_id": "sim_envs/Reach-v0", "observation_space": obs_space,
              "action_space": act_space, "inner_config": inner_config(0.1)}
    out = tmp_path / "bundle"

    def export(**over):
        return export_bundle(over.pop("model", model), over.pop("params", params), out,
                             **{**kwargs, **over})

    with pytest.raises(ValueError, match="parameter names"):
        export(params={k + "x": v for k, v in params.items()})
    with pytest.raises(ValueError, match="NaN or inf"):
        export(params={k: v * math.nan for k, v in params.items()})
    with pytest.raises(ValueError, match=r"lacks \['gamma'\]"):
        export(inner_config={k: v for k, v in inner_config(0.1).items() if k != "gamma"})
    with pytest.raises(ValueError, match="lr must be a finite positive"):
        export(inner_config=inner_config(-1.0))
    with pytest.raises(ValueError, match="lvc"):
        export(inner_config={**inner_config(0.1), "loss": "dice"})
    with pytest.raises(ValueError, match="do not match the policy"):
        export(observation_space=spaces(obs_dim=OBS_DIM + 1)[0])
    with pytest.raises(ValueError, match="include 1"):
        export(adapt_steps_options=(2, 3))
    with pytest.raises(ValueError, match="Meta-SGD lr"):
        export(inner_config=inner_config({k: torch.ones(3) for k in params}))
    assert not out.exists()  # nothing written by failed exports
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty.*keep.txt.*--overwrite"):
        export()
    assert (out / "keep.txt").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no temporary leftovers


# ---------------------------------------------------------------- --overwrite (issue 19)
def test_overwrite_never_removes_what_is_not_a_bundle(scalar_bundle, tmp_path):
    """The issue's data-loss cases: --overwrite on a run directory and on an unrelated
    folder with a user's file deleted them. Now both survive, byte for byte, and so does
    a bundle to which a user added a file; the refusal names --overwrite and the contents.
    The check runs before any export work (each refusal here is immediate)."""
    model, params, _ = scalar_bundle
    obs_space, act_space = spaces()
    run = tmp_path / "run"
    (run / "episodes").mkdir(parents=True)
    for name, data in {"checkpoint.pt": b"\x80weights", "log.jsonl": b'{"iteration": 1}\n',
                       "config.yaml": b"family: reach\n", "episodes/0.json": b"[]"}.items():
        (run / name).write_bytes(data)
    folder = tmp_path / "papers"
    folder.mkdir()
    (folder / "thesis.tex").write_text("my thesis")
    fake = tmp_path / "fake_bundle"  # a manifest that is not a bundle manifest
    fake.mkdir()
    (fake / "manifest.json").write_text('{"format": "npm", "files": {}}')
    a_file = tmp_path / "notes.txt"
    a_file.write_text("notes")

    def snapshot(root):
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file()}

    before = {d: snapshot(d) for d in (run, folder, fake)}
    for target, message in ((run, r"not one .*checkpoint.pt, config.yaml, episodes/"),
                            (folder, r"not one .*thesis.tex"),
                            (fake, r"not one .*not a metarobot.bundle manifest")):
        with pytest.raises(FileExistsError, match=r"--overwrite replaces only a metarobot "
                                                  r"bundle.*" + message):
            export_bundle(model, params, target, family="reach", env_id="sim_envs/Reach-v0",
                          observation_space=obs_space, action_space=act_space,
                          inner_config=inner_config(LR), overwrite=True)
        assert snapshot(target) == before[target]
    with pytest.raises(FileExistsError, match="not a directory"):
        export_bundle(model, params, a_file, family="reach", env_id="sim_envs/Reach-v0",
                      observation_space=obs_space, action_space=act_space,
                      inner_config=inner_config(LR), overwrite=True)
    assert a_file.read_text() == "notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake_bundle", "notes.txt",
                                                         "papers", "run"]


def test_overwrite_replaces_a_bundle_readable_by_others(scalar_bundle, tmp_path):
    model, params, existing = scalar_bundle
    obs_space, act_space = spaces()
    out = tmp_path / "bundle"
    shutil.copytree(existing, out)
    (out / "adapted.npz").write_bytes(b"a user's adapted parameters")
    kwargs = {"family": "reach", "env_id": "sim_envs/Reach-v0", "observation_space": obs_space,
              "action_space": act_space, "inner_config": inner_config(LR),
              "adapt_steps_options": (1,), "overwrite": True}
    other = {k: v + 1 for k, v in params.items()}
    with pytest.raises(FileExistsError, match=r"also holds \['adapted.npz'\]"):
        export_bundle(model, other, out, **kwargs)
    assert (out / "adapted.npz").exists() and load_bundle(out).params.sum() == \
        load_bundle(existing).params.sum()
    (out / "adapted.npz").unlink()
    export_bundle(model, other, out, **kwargs)
    replaced = load_bundle(out)
    assert np.array_equal(replaced.params, ParamLayout.of(other).flatten(other).numpy())
    assert sorted(replaced.adapt_files) == [1]  # the old adapt_k2/k3 files went with it
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == \
        {p.name: 0o644 for p in out.iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no leftovers
