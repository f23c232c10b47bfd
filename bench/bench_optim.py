"""Benchmark the meta-optimisation (inner adaptation + PPO outer steps) on synthetic data.

Measures, for a meta-batch of M tasks x E episodes x T steps (default 40 x 20 x 100, the
issue's reference size):

* wall time of one meta-update: :func:`metarobot.algos.promp.update`, ``epochs`` outer
  Adam steps on ``maml.meta_loss`` (K inner steps vmapped over tasks, second order), as
  the trainer runs it (``time_update``), and the time of the one adaptation it saves by
  reusing the sampling graph in epoch 0 (``adapt_forward_seconds``);
* peak memory against inner steps K and meta-batch size M (CUDA: max allocated; CPU:
  peak RSS growth, measured per configuration in a fresh subprocess);
* memory growth across repeated updates (should be ~0).

Run::

    python -m bench.bench_optim --device cpu             # 2-core CI-like machine
    python -m bench.bench_optim --device cuda            # on a GPU machine

Writes ``bench/results/optim/optim_<device>.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.common import REPO, command_line, machine_info
from metarobot.algos import maml, promp
from metarobot.core.batch import EpisodeBatch
from metarobot.core.policy import GaussianMLPPolicy, gaussian_log_prob, policy_forward
from metarobot.sampling.rollouts import AdaptationRollouts
from metarobot.training.config import InnerConfig, OuterConfig

OBS_DIM, ACT_DIM = 37, 4  # Grasp's sizes: a realistic, not a toy, input


def synthetic_batch(model: GaussianMLPPolicy, params: dict, m: int, e: int, t: int,
                    device: torch.device, seed: int) -> tuple[EpisodeBatch, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    obs = torch.randn(m, e, t, OBS_DIM, generator=g).to(device)
    with torch.no_grad():
        mean, log_std = policy_forward(model, params, obs)
        act = mean + torch.randn(mean.shape, generator=g).to(device) * log_std.exp()
        logp = gaussian_log_prob(mean, log_std, act)
    rew = torch.randn(m, e, t, generator=g).to(device)
    mask = torch.ones(m, e, t, device=device)
    adv = torch.randn(m, e, t, generator=g).to(device)
    success = torch.zeros(m, e, device=device)
    return EpisodeBatch(obs, act, rew, mask, logp, success), adv


def time_update(device: torch.device, m: int, e: int, t: int, inner_steps: int, epochs: int,
                repeats: int) -> dict:
    torch.manual_seed(0)
    model = GaussianMLPPolicy(OBS_DIM, ACT_DIM).to(device)
    params = {k: v.to(device) for k, v in model.init_params().items()}
    optimizer = torch.optim.Adam(params.values(), lr=1e-3)
    pre = [synthetic_batch(model, params, m, e, t, device, seed=k) for k in range(inner_steps)]
    post, post_adv = synthetic_batch(model, params, m, e, t, device, seed=99)
    pre_batches, pre_advs = [b for b, _ in pre], [a for _, a in pre]

    inner = InnerConfig(steps=inner_steps, lr=0.1)
    outer = OuterConfig(epochs=epochs, adaptive_eta=False)

    def step(loss: torch.Tensor) -> bool:
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return True

    def sampling_adaptation() -> AdaptationRollouts:
        """What sampling leaves for the update: the adapted parameters with their graph."""
        adapted, _, _ = maml.adapt(model, params, pre_batches, pre_advs, inner.lr, inner_steps)
        return AdaptationRollouts(pre_batches + [post], pre_advs + [post_adv], [], adapted)

    def update(rollouts: AdaptationRollouts) -> None:
        old = {k: v.detach().clone() for k, v in params.items()}
        promp.update(model, params, old, rollouts, post_adv, inner.lr, inner, outer, 1.0, step)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    update(sampling_adaptation())  # warm-up (CUDA kernels, allocator)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, adapt_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        rollouts = sampling_adaptation()
        sync()
        adapt_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        update(rollouts)
        sync()
        times.append(time.perf_counter() - start)
    out = {"M": m, "E": e, "T": t, "inner_steps": inner_steps, "epochs": epochs,
           "seconds_per_update": sorted(times)[len(times) // 2], "all_seconds": times,
           "adapt_forward_seconds": sorted(adapt_times)[len(adapt_times) // 2],
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "rss_growth_during_repeats_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                            - rss_before) / 1024}
    if device.type == "cuda":
        out["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_child(device: str, m: int, e: int, t: int, k: int, epochs: int, repeats: int) -> dict:
    """One configuration in a fresh process, so peak RSS belongs to it alone."""
    cmd = [sys.executable, "-m", "bench.bench_optim", "--child", "--device", device,
           "--tasks", str(m), "--episodes", str(e), "--horizon", str(t), "--inner-steps", str(k),
           "--epochs", str(epochs), "--repeats", str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer memory configurations")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "optim")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.child:
        print(json.dumps(time_update(device, args.tasks, args.episodes, args.horizon,
                                     args.inner_steps, args.epochs, args.repeats)))
        return

    reference = run_child(args.device, args.tasks, args.episodes, args.horizon,
                          args.inner_steps, args.epochs, args.repeats)
    print(f"{args.device}: one meta-update ({args.tasks} tasks x {args.episodes} episodes x "
          f"{args.horizon} steps, K={args.inner_steps}, {args.epochs} outer Adam steps): "
          f"{reference['seconds_per_update']:.3f} s; reusing the sampling graph in epoch 0 "
          f"saves one adaptation of {reference['adapt_forward_seconds']:.3f} s")
    sizes = [10, 20, 40] if args.quick else [5, 10, 20, 40]
    steps = [1, 2] if args.quick else [1, 2, 3]
    memory = []
    for k in steps:
        for m in sizes:
            row = run_child(args.device, m, args.episodes, args.horizon, k, 1, 1)
            memory.append(row)
            print(f"  K={k} M={m:>3}: {row['seconds_per_update']:.3f} s/update(1 epoch), peak "
                  f"RSS {row['peak_rss_mb']:.0f} MB"
                  + (f", CUDA peak {row['cuda_peak_allocated_mb']:.0f} MB"
                     if "cuda_peak_allocated_mb" in row else ""))
    growth = run_child(args.device, 10, args.episodes, args.horizon, 1, 1, 20)
    print(f"  RSS growth over 20 repeated updates after warm-up: "
          f"{growth['rss_growth_during_repeats_mb']:.1f} MB")

    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "command": command_line(),
        "device": args.device,
        "cuda_name": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "machine": machine_info(), "torch_threads": torch.get_num_threads(),
        "reference_update": reference,
        "memory": memory, "growth": growth,
    }
    json_path = args.out / f"optim_{args.device}.json"
    json_path.write_text(json.dumps(result, indent=2))
    _plot(memory, args.out / f"optim_{args.device}.png", args.device)
    print(f"wrote {json_path}")


def _plot(memory: list[dict], path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "cuda_peak_allocated_mb" if device == "cuda" else "peak_rss_mb"
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for k in sorted({r["inner_steps"] for r in memory}):
        rows = [r for r in memory if r["inner_steps"] == k]
        axes[0].plot([r["M"] for r in rows], [r[key] for r in rows], marker="o", label=f"K={k}")
        axes[1].plot([r["M"] for r in rows], [r["seconds_per_update"] for r in rows],
                     marker="o", label=f"K={k}")
    axes[0].set_ylabel("peak memory (MB)" + (" CUDA" if device == "cuda" else " RSS"))
    axes[1].set_ylabel("seconds per update (1 outer step)")
    for ax in axes:
        ax.set_xlabel("meta-batch size M (tasks)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"meta-optimisation on {device}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
