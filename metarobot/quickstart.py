"""``metarobot quickstart``: the whole pipeline on a built-in default, with a report.

Meta-train on Reach -> evaluate on held-out test tasks before/after adaptation -> export
the ONNX bundle -> adapt with the torch-free device runtime on held-out tasks in the
simulator -> summary table, plots (PNG) and ``report.md`` in the run directory.
"""

from __future__ import annotations

import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metarobot import api
from metarobot.training.checkpoint import CHECKPOINT_NAME, load_run
from metarobot.training.config import config_from_dict, overrides_between
from metarobot.training.evaluate import EvaluationResult, mean_ci95
from metarobot.training.runlog import read_log
from metarobot.training.trainer import MetaTrainer

#: Held-out tasks and adaptation settings of the quickstart's evaluation.
EVAL_TASKS, EVAL_STEPS, DEVICE_TASKS, DEVICE_EPISODES = 20, 2, 20, 10


@dataclass
class DeviceAdaptation:
    """Per-task mean return and success of the device runtime, before and after adapting."""

    task_ids: list[str]
    returns: np.ndarray  #: [2, N]: before, after
    success: np.ndarray  #: [2, N]
    accepted: list[bool]


def device_adaptation(bundle: Path, split: str, num_tasks: int, episodes: int, seed: int,
                      ) -> DeviceAdaptation:
    """Adapt the bundle with :class:`deploy.AdaptivePolicy` on simulator tasks (one step)."""
    import gymnasium

    from deploy import AdaptivePolicy, GymController
    from deploy.cli import run_episodes

    policy = AdaptivePolicy.load(bundle, seed=seed)
    env = gymnasium.make(policy.bundle.env_id, **policy.bundle.env_kwargs)
    tasks = env.unwrapped.sample_tasks(num_tasks, split=split, seed=seed)
    before, after, accepted = [], [], []
    with policy:
        for i, task in enumerate(tasks):
            policy.reset_adaptation()
            env.unwrapped.set_task(task)
            controller = GymController(env, seed=seed * 100_003 + i)
            before.append(run_episodes(controller, policy, episodes))
            accepted.append(policy.adapt(1).accepted)
            after.append(run_episodes(controller, policy, episodes))
    env.close()
    returns = np.array([[np.mean(r) for r, _ in before], [np.mean(r) for r, _ in after]])
    success = np.array([[np.mean(s) for _, s in before], [np.mean(s) for _, s in after]])
    return DeviceAdaptation([t.task_id for t in tasks], returns, success, accepted)


def _training_curve(run_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(read_log(run_dir).values())
    its = [r["iteration"] for r in records]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(its, [r["return/pre"] for r in records], label="before adaptation")
    ax.plot(its, [r["return/post"] for r in records], label="after 1 adaptation step")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("mean return (training tasks)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = run_dir / "training_curve.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _row(label: str, values: np.ndarray) -> str:
    mean, ci = mean_ci95(values)
    return f"| {label} | {mean:.2f} ± {ci:.2f} |"


def write_report(run_dir: Path, evaluation: EvaluationResult, device: DeviceAdaptation,
                 wall: dict[str, float], command: str) -> Path:
    """``report.md``: what ran, the numbers with 95% CIs, the plots."""
    lines = [
        "# metarobot quickstart report", "",
        f"Command: `{command}` · commit `{_commit()}` · {platform.node()} · "
        f"{platform.processor() or platform.machine()} · {time.strftime('%Y-%m-%d %H:%M')}", "",
        "## Held-out test tasks, trainer-side adaptation", "",
        f"{len(evaluation.task_ids)} test tasks x {evaluation.episodes} episodes per step; "
        "mean ± 95% CI over tasks.", "",
        "| adaptation steps | return | success |", "| --- | --- | --- |"]
    for row in evaluation.summary():
        lines.append(f"| {row['adapt_steps']} | {row['return_mean']:.2f} ± "
                     f"{row['return_ci95']:.2f} | {row['success_mean']:.2f} ± "
                     f"{row['success_ci95']:.2f} |")
    lines += ["", "![evaluation](eval/evaluation_test.png)", "",
              "## Held-out test tasks, device runtime (numpy + onnxruntime)", "",
              f"{len(device.task_ids)} test tasks, {DEVICE_EPISODES} episodes before and after "
              f"one adaptation step ({sum(device.accepted)} of {len(device.accepted)} "
              "adaptations accepted by the safety checks).", "",
              "| | return |", "| --- | --- |",
              _row("before adaptation", device.returns[0]),
              _row("after adaptation", device.returns[1]), "",
              "## Training", "", "![training curve](training_curve.png)", "",
              "| phase | wall time (s) |", "| --- | --- |"]
    lines += [f"| {k} | {v:.0f} |" for k, v in wall.items()]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_quickstart(config: str = "quickstart", overrides: list[str] | None = None,
                   run_dir: str | Path = "runs/quickstart", progress: bool = True) -> Path:
    """Run the pipeline; returns the path of ``report.md``."""
    run_dir = Path(run_dir)
    wall: dict[str, float] = {}
    t0 = time.perf_counter()
    cfg = api.resolve_config(config, None, overrides)
    print(f"[1/4] meta-training on {cfg.family}: {cfg.iterations} iterations of "
          f"{cfg.meta_batch.tasks} tasks x {cfg.meta_batch.episodes} episodes -> {run_dir}")
    if (run_dir / CHECKPOINT_NAME).exists():
        print("      resuming the existing run in that directory")
        saved = config_from_dict(load_run(run_dir).config)
        MetaTrainer.resume(run_dir, progress=progress,
                           overrides=overrides_between(saved, cfg)).train()
    else:
        api.train(cfg, run_dir=run_dir, progress=progress)
    wall["meta-training"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    print(f"[2/4] evaluating on {EVAL_TASKS} held-out test tasks, {EVAL_STEPS} adaptation steps")
    evaluation = api.evaluate(run_dir, "test", EVAL_STEPS, EVAL_TASKS)
    print(evaluation.table())
    wall["evaluation"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    bundle = api.export(run_dir, run_dir / "bundle", overwrite=True)
    print(f"[3/4] exported the ONNX bundle to {bundle}")
    wall["export"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    print(f"[4/4] adapting with the device runtime on {DEVICE_TASKS} held-out tasks")
    device = device_adaptation(bundle, "test", DEVICE_TASKS, DEVICE_EPISODES, seed=1)
    wall["device adaptation"] = time.perf_counter() - t3
    wall["total"] = time.perf_counter() - t0

    _training_curve(run_dir)
    report = write_report(run_dir, evaluation, device, wall, "metarobot quickstart")
    before, after = (mean_ci95(device.returns[i]) for i in (0, 1))
    rows = evaluation.summary()
    print("\nsummary (held-out test tasks, mean ± 95% CI over tasks)")
    print(f"  trainer: return {rows[0]['return_mean']:.2f} ± {rows[0]['return_ci95']:.2f} "
          f"before -> {rows[1]['return_mean']:.2f} ± {rows[1]['return_ci95']:.2f} after 1 step")
    print(f"  device:  return {before[0]:.2f} ± {before[1]:.2f} before -> "
          f"{after[0]:.2f} ± {after[1]:.2f} after 1 step")
    print(f"  wall time {wall['total']:.0f} s; report: {report}")
    return report
