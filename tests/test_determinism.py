"""Seeded bit-identity: a tiny 3-iteration run ends with exactly the reference parameters.

Each case trains the reach family for 3 meta-iterations on a tiny config and compares
every final policy tensor, the Meta-SGD learning rates (where used), the KL coefficient
eta and the recorded adaptation KLs with ``tests/data/determinism_reference.npz``,
bit for bit. A refactor that claims to keep behaviour the same must keep this passing.

The reference is exact for the CPU build of torch it was written with (2.13.0 CPU, one
thread); another torch version, build or BLAS may round differently. If the torch version
changes deliberately (or behaviour changes on purpose), regenerate it and commit the file::

    OMP_NUM_THREADS=1 python tests/test_determinism.py --regen
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metarobot import api
from metarobot.training.trainer import MetaTrainer

REFERENCE = Path(__file__).parent / "data" / "determinism_reference.npz"
TINY = ["meta_batch.tasks=2", "meta_batch.episodes=2", "sampler.num_workers=0",
        "sampler.envs_per_worker=4", "iterations=3", "checkpoint_every=3", "device=cpu",
        "policy.hidden=[16, 16]", "seed=3"]
#: Each case: the overrides on top of :data:`TINY`. Together they run every inner loss,
#: two inner steps, Meta-SGD, both outer algorithms and the learned value baseline.
CASES = {
    "promp_lvc_metasgd": ["outer.algo=ppo", "inner.loss=lvc", "inner.meta_sgd=true",
                          "outer.epochs=2"],
    "ppo_dice_2steps": ["outer.algo=ppo", "inner.loss=dice", "inner.steps=2",
                        "outer.epochs=2"],
    "ppo_vpg_mlp": ["outer.algo=ppo", "inner.loss=vpg", "outer.epochs=2",
                    "advantages.baseline=mlp", "advantages.value_hidden=[16]"],
    "reptile": ["outer.algo=reptile", "outer.epochs=2"],
}


def final_state(case: str, run_dir: Path) -> dict[str, np.ndarray]:
    """The arrays a run of ``case`` ends with, keyed ``"<case>/<name>"``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: reductions add in one fixed order
    try:
        config = api.resolve_config("reach-cpu", overrides=TINY + CASES[case])
        trainer = MetaTrainer(config, run_dir, progress=False)
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    out = {f"{case}/params/{k}": v.detach().numpy().copy() for k, v in trainer.params.items()}
    for k, v in (trainer.meta_sgd_lr or {}).items():
        out[f"{case}/meta_sgd_lr/{k}"] = v.detach().numpy().copy()
    out[f"{case}/eta"] = np.array(trainer.eta, dtype=np.float64)
    out[f"{case}/recent_adaptation_kl"] = np.array(trainer.recent_adaptation_kl,
                                                   dtype=np.float64)
    out[f"{case}/env_steps"] = np.array(trainer.env_steps, dtype=np.int64)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_seeded_run_is_bit_identical_to_the_reference(case, tmp_path):
    reference = dict(np.load(REFERENCE))
    expected = {k: v for k, v in reference.items() if k.startswith(f"{case}/")}
    assert expected, f"no reference for {case}; regenerate with --regen"
    got = final_state(case, tmp_path / case)
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        assert got[key].tobytes() == value.tobytes(), (
            f"{key} differs from the reference: max |diff| "
            f"{np.abs(got[key].astype(np.float64) - value.astype(np.float64)).max()}")


def regenerate() -> None:
    """Write :data:`REFERENCE` from the current code (see the module docstring)."""
    import tempfile

    arrays: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in sorted(CASES):
            arrays.update(final_state(case, Path(tmp) / case))
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(REFERENCE, **arrays)
    print(f"wrote {len(arrays)} arrays to {REFERENCE} (torch {torch.__version__})")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regen"]:
        sys.exit("usage: python tests/test_determinism.py --regen")
    regenerate()
