"""Time per phase of a meta-iteration, and sampler throughput against raw env throughput.

Runs a few meta-iterations of the trainer at a given config (default: Reach at the
default meta-batch, 40 tasks x 20 episodes, on this machine's cores) and reports, from the
trainer's own per-iteration timings, the seconds spent sampling, in the inner step and in
the outer step; then, in the same run and on the same worker processes, the sampler's
env steps per second during each iteration (over its sample calls, and per call) against
the raw env throughput of those workers (random actions, no policy, no per-step messages)
measured just before and just after that iteration; the figure is the median over the
iterations after the first.

Run::

    python -m bench.bench_trainer                          # reach, 40 x 20, 2 workers
    python -m bench.bench_trainer --set meta_batch.tasks=10 --iterations 3

Writes ``bench/results/trainer/bench_trainer.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from bench.common import REPO, command_line, machine_info
from metarobot.api import resolve_config
from metarobot.training.trainer import MetaTrainer

PHASES = ("time/sampling", "time/value_baseline", "time/outer_update")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="reach")
    parser.add_argument("--iterations", type=int, default=4,
                        help="meta-iterations (the first, which starts the workers, is not "
                             "counted)")
    parser.add_argument("--raw-steps", type=int, default=200,
                        help="steps per env of each raw-throughput measurement")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "trainer")
    args = parser.parse_args()
    if args.iterations < 2:
        parser.error("--iterations must be >= 2 (the first only starts the workers)")
    overrides = ["device=cpu", "sampler.num_workers=2", "sampler.envs_per_worker=50",
                 f"iterations={args.iterations}", *args.overrides]
    config = resolve_config(args.config, overrides=overrides)

    with tempfile.TemporaryDirectory() as run_dir:
        trainer = MetaTrainer(config, run_dir, progress=False)
        sampler = trainer._sampler_instance()
        calls: list[dict] = []  # the sampler's own stats of every sample call
        sample = sampler.sample

        def recording_sample(*args: object, **kwargs: object) -> object:
            batch = sample(*args, **kwargs)
            calls.append(dict(sampler.last_stats))
            return batch

        sampler.sample = recording_sample
        # Raw throughput is measured between iterations, so each iteration is compared with
        # the mean of the raw rates just before and just after it: a shared machine's speed
        # drifts over a minute more than the sampler's overhead.
        rows, raws = [], []
        for i in range(args.iterations):
            del calls[:]
            scalars = trainer.run_iteration()
            raws.append(sampler.measure_raw_throughput(steps_per_env=args.raw_steps
                                                       ).steps_per_second)
            row = {**{k: scalars[k] for k in PHASES + ("time/iteration",)},
                   # Every call of the iteration (pre- then post-update sampling):
                   "sample_calls": [{"env_steps": c["env_steps"], "seconds": c["seconds"],
                                     "policy_seconds": c["policy_seconds"]} for c in calls],
                   "sampler_steps_per_s": sum(c["env_steps"] for c in calls)
                   / sum(c["seconds"] for c in calls)}
            if i > 0:  # the first iteration starts the worker processes
                raw = (raws[-2] + raws[-1]) / 2
                row.update(raw_steps_per_s=raw, sampler_over_raw=row["sampler_steps_per_s"] / raw,
                           sampler_over_raw_per_call=[c["env_steps"] / c["seconds"] / raw
                                                      for c in calls])
            rows.append(row)
            print(f"iteration {trainer.iteration}: " + ", ".join(
                f"{k.split('/')[1]} {scalars[k]:.2f} s" for k in PHASES + ("time/iteration",))
                + (f"; sampler/raw {row['sampler_over_raw']:.2f} (per call "
                   + ", ".join(f"{r:.2f}" for r in row["sampler_over_raw_per_call"]) + ")"
                   if i > 0 else ""))
        trainer.close()

    timed = rows[1:]
    ratio = float(np.median([r["sampler_over_raw"] for r in timed]))
    print(f"sampler / raw env throughput of the same workers, median over {len(timed)} "
          f"iterations: {ratio:.2f} (target >= 0.8; per iteration "
          + ", ".join(f"{r['sampler_over_raw']:.2f}" for r in timed) + ")")
    result = {"command": command_line(),
              "config": config.to_dict(), "machine": machine_info(), "iterations": rows,
              "raw_steps_per_s_between_iterations": raws, "sampler_over_raw": ratio}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_trainer.json").write_text(json.dumps(result, indent=2))
    median_row = {k: float(np.median([r[k] for r in timed])) for k in PHASES}
    _plot(median_row, args.out / "bench_trainer.png", config)
    print(f"wrote {args.out / 'bench_trainer.json'}")


def _plot(row: dict, path: Path, config: object) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.4))
    left = 0.0
    for key, color in zip(PHASES, ("tab:blue", "tab:purple", "tab:orange", "tab:green"),
                          strict=True):
        ax.barh([0], [row[key]], left=left, color=color, label=key.split("/")[1])
        left += row[key]
    ax.set_yticks([])
    ax.set_xlabel("seconds per meta-iteration (median)")
    ax.set_title(f"{config.family}: {config.meta_batch.tasks} tasks x "
                 f"{config.meta_batch.episodes} episodes, 2 CPU cores")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
