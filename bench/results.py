"""Results of issue 5: meta-learned adaptation on held-out test tasks against SB3 baselines.

For one family and each seed, in stages (iterations ``--stages``):

1. **Meta-train** to the stage's iteration (a new run, or ``MetaTrainer.resume`` of the
   seed's run up to it) and keep a copy of that checkpoint.
2. **Evaluate** it on ``--eval-tasks`` held-out test tasks (the same tasks for every seed
   and baseline: ``sample_tasks(M, "test", seed=--eval-seed)``): return and success
   before adaptation and after 1..``--adapt-steps`` steps of E episodes each (E = the
   config's ``meta_batch.episodes`` unless ``--episodes``), with the cumulative
   meta-training env steps of the checkpoint.
3. **Baseline (a)** (``--baselines``): SB3 multi-task PPO trained on training tasks for the
   same env steps as meta-training at this stage (continuing from the previous stage's
   model), then fine-tuned on each test task with the same budget: K PPO updates of E
   episodes, return/success on fresh episodes before and after each (``bench/baselines.py``).
4. After the last stage, **baseline (b)**: SB3 PPO from scratch on the first
   ``--scratch-tasks`` test tasks until its return reaches the meta-policy's return after
   ``--scratch-target-step`` adaptation steps on that task, or ``--scratch-cap`` steps.

Every stage writes its JSON under ``--out/<family>/seed<S>/`` and is skipped when that
JSON exists. Each stage's meta checkpoint and multi-task PPO model are kept beside the JSON
(``--out/<family>/seed<S>/saved/``, committed: a few hundred KB each), so that a run whose
``--runs-dir`` is gone (a new machine, a new session) continues from its latest saved stage
instead of starting over; the run directory itself (logs, TensorBoard) is not committed.
Per seed and per family (over seeds) it writes
``curves.png`` (return/success vs meta-training env steps) and ``meta_vs_baseline.png``
(after 0..K steps, last stage), and regenerates the report (``docs/results.md`` when
``--out`` is the default) from all JSON found under ``--out``; a hand-written
``--out/<family>/notes.md`` (findings, what was tried, what next) is placed at the top of
that family's section. The statistics are in ``bench/stats.py``, the figures and the report
in ``bench/report.py``.

Usage::

    python -m bench.results --family reach --seeds 0 1 2          # reach-cpu, 4 stages
    python -m bench.results --family grasp --seeds 0 1 2 --stages 50 100 150 200
    python -m bench.results --report-only                          # regenerate the report
    # tiny smoke run, outside the committed results:
    python -m bench.results --family reach --seeds 0 --stages 2 4 --eval-tasks 4 \\
        --set meta_batch.tasks=2 --set meta_batch.episodes=2 --scratch-cap 2048 \\
        --out /tmp/smoke --runs-dir /tmp/smoke/runs
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import baselines
from bench.common import REPO, command_line, git_head, machine_info, read_json, write_json
from bench.report import write_report
from bench.stats import summary_rows
from deploy.files import atomic_write_bytes
from metarobot.api import resolve_config
from metarobot.training.checkpoint import CHECKPOINT_NAME, load_run
from metarobot.training.config import (
    RESUME_SAFE_KEYS,
    TrainConfig,
    config_from_dict,
    flat_items,
)
from metarobot.training.evaluate import evaluate_policy, load_trained_policy
from metarobot.training.runlog import read_log
from metarobot.training.trainer import TrainingStopped
from sim_envs.registry import FAMILY_NAMES

DEFAULT_OUT = REPO / "bench" / "results" / "meta"
DEFAULT_REPORT = REPO / "docs" / "results.md"
DEFAULT_RUNS = REPO / "runs" / "results"
DEFAULT_README = REPO / "README.md"


# ---------------------------------------------------------------------------- provenance
@functools.cache
def git_commit() -> str:
    """HEAD (``+dirty`` with uncommitted code changes) when first called: ``main`` calls it
    at start, so a result written hours later names the code the process loaded, not a
    commit made while it ran (``machine_info``'s commit is the same ``git_head``)."""
    head = git_head()
    if not head:
        return ""
    # Changes to what the bench scripts write (results, this report) do not make the
    # code that produced a result dirty.
    outputs = (DEFAULT_OUT.parent, DEFAULT_REPORT, DEFAULT_README)  # + README table
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", *(f":!{p.relative_to(REPO)}" for p in outputs)],
                               cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""
    return head + ("+dirty" if dirty else "")


MACHINE_PACKAGES = ("torch", "pybullet", "gymnasium", "stable_baselines3", "numpy")


def provenance() -> dict[str, Any]:
    return {"command": command_line(), "git_commit": git_commit(),
            "machine": machine_info(MACHINE_PACKAGES),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def log(message: str) -> None:
    print(f"[results {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------- meta-training
def default_stages(iterations: int) -> list[int]:
    """Four evenly spaced evaluation points ending at the config's iterations."""
    return sorted({max(1, round(iterations * q / 4)) for q in (1, 2, 3, 4)})


def checkpoint_iteration(run_dir: Path) -> int | None:
    return load_run(run_dir).iteration if (run_dir / CHECKPOINT_NAME).exists() else None


def check_same_config(run_dir: Path, cfg: TrainConfig) -> None:
    """Refuse to resume a run made with a different config (other than the keys a resume
    may change, :data:`~metarobot.training.config.RESUME_SAFE_KEYS`: they do not change results)."""
    saved = flat_items(config_from_dict(load_run(run_dir).config).to_dict())
    wanted = flat_items(cfg.to_dict())
    diff = sorted(k for k in set(saved) | set(wanted)
                  if k not in RESUME_SAFE_KEYS and saved.get(k) != wanted.get(k))
    if diff:
        raise SystemExit(f"{run_dir} was trained with a different config ({diff}); "
                         "use another --runs-dir/--out or delete it")


def saved_stages(seed_out: Path, what: str) -> Path:
    """The folder of a seed's saved stages, one ``itNNNNN`` subfolder each: meta checkpoints
    (``what="meta"``) or multi-task PPO models (``what="baseline_multitask"``), kept beside
    the results JSON and committed."""
    return seed_out / "saved" / what


def saved_dir(seed_out: Path, what: str, iteration: int) -> Path:
    """Where stage ``iteration``'s checkpoint or model is kept (see :func:`saved_stages`)."""
    return saved_stages(seed_out, what) / stage_name(iteration)


def copy_atomically(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` so that ``dst`` is the old file or the whole new one."""
    data = src.read_bytes()
    atomic_write_bytes(dst, lambda f: f.write(data))


def restore_run_dir(run_dir: Path, seed_out: Path, iteration: int) -> None:
    """Seed a missing run directory with the latest saved meta checkpoint below
    ``iteration``, so training continues from it rather than from scratch."""
    if (run_dir / CHECKPOINT_NAME).exists():
        return
    earlier = latest_saved_stage(saved_stages(seed_out, "meta"), CHECKPOINT_NAME, iteration)
    if earlier is not None:
        log(f"{run_dir} has no checkpoint: continuing from the saved stage {earlier}")
        copy_atomically(saved_dir(seed_out, "meta", earlier) / CHECKPOINT_NAME,
                        run_dir / CHECKPOINT_NAME)


def train_meta_to(cfg: TrainConfig, run_dir: Path, iteration: int, progress: bool) -> float:
    """Meta-train ``run_dir`` up to ``iteration`` (new run or resume); wall seconds."""
    from metarobot.training.trainer import MetaTrainer

    t0 = time.perf_counter()
    if (run_dir / CHECKPOINT_NAME).exists():
        check_same_config(run_dir, cfg)
        MetaTrainer.resume(run_dir, progress=progress, iterations=iteration).train()
    else:
        MetaTrainer(dataclasses.replace(cfg, iterations=iteration), run_dir,
                    progress=progress).train()
    return time.perf_counter() - t0


def iteration_times(log: dict[int, dict[str, Any]]) -> dict[int, float]:
    """``time/iteration`` of each iteration in a run's log (:func:`read_log`: the last
    record of an iteration that was redone after an interruption)."""
    return {it: float(r["time/iteration"]) for it, r in log.items() if "time/iteration" in r}


def curriculum_levels(log: dict[int, dict[str, Any]], first: int, last: int,
                      ) -> dict[str, Any] | None:
    """The curriculum's level per terrain type after each iteration ``first..last`` from a
    run's log (``curriculum/level_<type>``), or ``None`` for a run without one."""
    prefix = "curriculum/level_"
    records = {it: r for it, r in log.items() if first <= it <= last
               and any(k.startswith(prefix) for k in r)}
    if not records:
        return None
    iterations = sorted(records)
    groups = sorted({k[len(prefix):] for r in records.values() for k in r
                     if k.startswith(prefix)})
    return {"iteration": iterations,
            "levels": {g: [records[it].get(prefix + g) for it in iterations] for g in groups}}


def stage_name(iteration: int) -> str:
    return f"it{iteration:05d}"


def run_meta_stage(ctx: dict[str, Any], seed_out: Path, run_dir: Path, iteration: int,
                   prev_iteration: int) -> dict[str, Any]:
    path = seed_out / f"meta_{stage_name(iteration)}.json"
    if path.exists():
        log(f"meta stage {iteration}: {path} exists, skipped")
        return read_json(path)
    cfg: TrainConfig = ctx["config"]
    snapshot = saved_dir(seed_out, "meta", iteration)
    train_wall = None
    if not (snapshot / CHECKPOINT_NAME).exists():
        restore_run_dir(run_dir, seed_out, iteration)
        current = checkpoint_iteration(run_dir)
        if current is not None and current > iteration:
            raise SystemExit(f"{run_dir} is already at iteration {current} > stage {iteration} "
                             "and has no snapshot of it: choose stages >= the run's iteration")
        if current is None or current < iteration:
            log(f"meta-training {cfg.family} seed {cfg.seed} to iteration {iteration}")
            train_wall = train_meta_to(cfg, run_dir, iteration, ctx["progress"])
        if checkpoint_iteration(run_dir) != iteration:
            raise SystemExit(f"training stopped before iteration {iteration} (interrupted?); "
                             "run the same command again to resume")
        copy_atomically(run_dir / CHECKPOINT_NAME, snapshot / CHECKPOINT_NAME)
    policy = load_trained_policy(snapshot)
    env_steps = policy.env_steps
    log(f"evaluating iteration {iteration} ({env_steps} env steps) on {ctx['eval_tasks']} "
        f"test tasks")
    t0 = time.perf_counter()
    result = evaluate_policy(policy, "test", ctx["adapt_steps"], ctx["eval_tasks"],
                             ctx["episodes"], seed=ctx["eval_seed"])
    eval_wall = time.perf_counter() - t0
    print(result.table(), flush=True)
    run_log = read_log(run_dir)
    times = iteration_times(run_log)
    upto = [times[i] for i in range(1, iteration + 1) if i in times]
    stage = [times[i] for i in range(prev_iteration + 1, iteration + 1) if i in times]
    data = {"kind": "meta", "family": cfg.family, "seed": cfg.seed, "iteration": iteration,
            "env_steps": env_steps, "config_name": ctx["config_name"],
            "overrides": ctx["overrides"], "config": cfg.to_dict(),
            "eval_seed": ctx["eval_seed"], "evaluation": result.to_dict(),
            "timing": {"iteration_s_mean": float(np.mean(upto)) if upto else None,
                       "iteration_s_total": float(np.sum(upto)) if upto else None,
                       "iterations_timed": len(upto),
                       "stage_iteration_s_mean": float(np.mean(stage)) if stage else None,
                       "stage_train_wall_s": train_wall, "eval_wall_s": eval_wall},
            **provenance()}
    levels = curriculum_levels(run_log, prev_iteration + 1, iteration)
    if levels is not None:  # this stage's part of the levels' history (levels.png)
        data["curriculum_levels"] = levels
    write_json(path, data)
    return data


# ---------------------------------------------------------------------------- baselines
def latest_saved_stage(folder: Path, filename: str, before: int) -> int | None:
    """The latest iteration below ``before`` whose ``folder/itNNNNN/filename`` exists.

    Looks at every saved stage, not only those asked for in this run, so that
    ``--stages 150`` continues the PPO saved at stage 100 instead of starting over.
    """
    saved = [int(d.name[2:]) for d in folder.glob("it" + "[0-9]" * 5)
             if (d / filename).exists()]
    return max((i for i in saved if i < before), default=None)


def run_baseline_stage(ctx: dict[str, Any], seed_out: Path, run_dir: Path,
                       meta: dict[str, Any]) -> dict[str, Any]:
    iteration = meta["iteration"]
    path = seed_out / f"baseline_{stage_name(iteration)}.json"
    if path.exists():
        log(f"baseline stage {iteration}: {path} exists, skipped")
        return read_json(path)
    cfg: TrainConfig = ctx["config"]
    model_dir = saved_dir(seed_out, "baseline_multitask", iteration)
    train_wall = None
    if (model_dir / "model.zip").exists():
        base = baselines.load_sb3_policy(model_dir, cfg.family, cfg.env_kwargs)
    else:
        earlier = latest_saved_stage(model_dir.parent, "model.zip", iteration)
        init = None if earlier is None else model_dir.with_name(stage_name(earlier))
        log(f"multi-task PPO to {meta['env_steps']} env steps (from "
            f"{init.name if init else 'scratch'})")
        t0 = time.perf_counter()
        base = baselines.train_multitask_ppo(
            cfg.family, meta["env_steps"], seed=baselines._seed_int(cfg.seed, iteration),
            init=init, n_envs=ctx["baseline_envs"], hidden=cfg.policy.hidden,
            env_kwargs=cfg.env_kwargs, log_std_init=ctx["baseline_log_std"])
        train_wall = time.perf_counter() - t0
        base.save(model_dir.with_name(model_dir.name + ".tmp"))
        model_dir.with_name(model_dir.name + ".tmp").replace(model_dir)
    tasks = baselines.held_out_tasks(cfg.family, ctx["eval_tasks"], ctx["eval_seed"])
    if [t.task_id for t in tasks] != meta["evaluation"]["task_ids"]:
        raise SystemExit("baseline test tasks differ from the meta-policy's (same seed?)")
    episodes = meta["evaluation"]["episodes"]
    log(f"fine-tuning multi-task PPO ({base.model.num_timesteps} steps) on {len(tasks)} test "
        f"tasks: {ctx['adapt_steps']} steps x {episodes} episodes")
    ft = baselines.finetune_on_tasks(base, tasks, episodes, ctx["adapt_steps"],
                                     seed=cfg.seed, env_kwargs=cfg.env_kwargs,
                                     progress=lambda m: log("  " + m))
    data = {"kind": "baseline_multitask", "family": cfg.family, "seed": cfg.seed,
            "iteration": iteration, "meta_env_steps": meta["env_steps"],
            "baseline_env_steps": int(base.model.num_timesteps),
            "multitask_ppo": {**baselines.MULTITASK_PPO, "n_envs": ctx["baseline_envs"],
                              "hidden": cfg.policy.hidden, "vec_normalize": True,
                              "log_std_init": float(base.model.policy.log_std_init)},
            "eval_seed": ctx["eval_seed"], "task_ids": ft.task_ids, "episodes": episodes,
            "returns": ft.returns, "success": ft.success, "summary": summary_rows(ft.returns,
                                                                               ft.success),
            "train_steps_per_task": ft.train_steps, "eval_steps_per_task": ft.eval_steps,
            "finetune": ft.meta, "timing": {"train_wall_s": train_wall,
                                            "finetune_wall_s": ft.meta["wall_s"]},
            **provenance()}
    write_json(path, data)
    return data


def run_scratch(ctx: dict[str, Any], seed_out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    iteration = meta["iteration"]
    path = seed_out / f"scratch_{stage_name(iteration)}.json"
    settings = {"cap": ctx["scratch_cap"], "eval_every": ctx["scratch_eval_every"],
                "target_step": ctx["scratch_target_step"]}
    data = read_json(path) if path.exists() else None
    if data is not None and data["complete"]:
        log(f"scratch baseline: {path} exists, skipped")
        return data
    if data is not None and data["settings"] != settings:
        raise SystemExit(f"{path} is a partial run with other settings {data['settings']}; "
                         "delete it or use the same --scratch-* options")
    cfg: TrainConfig = ctx["config"]
    k = ctx["scratch_target_step"]
    if not 0 <= k <= ctx["adapt_steps"]:
        raise SystemExit("--scratch-target-step must be within 0..--adapt-steps")
    tasks = baselines.held_out_tasks(cfg.family, ctx["eval_tasks"], ctx["eval_seed"])
    tasks = tasks[:ctx["scratch_tasks"]]
    targets = meta["evaluation"]["returns"][k]
    episodes = meta["evaluation"]["episodes"]
    data = data or {"kind": "scratch", "family": cfg.family, "seed": cfg.seed,
                    "iteration": iteration, "settings": settings, "episodes": episodes,
                    "scratch_ppo": baselines.SCRATCH_PPO, "eval_seed": ctx["eval_seed"],
                    "tasks": [], "complete": False}
    done = {t["task_id"] for t in data["tasks"]}
    for j, task in enumerate(tasks):
        if task.task_id in done:
            continue
        log(f"PPO from scratch on test task {j + 1}/{len(tasks)} to return {targets[j]:.2f} "
            f"(meta after {k} step(s)), cap {ctx['scratch_cap']}")
        res = baselines.ppo_from_scratch_to_target(
            task, targets[j], ctx["scratch_cap"], ctx["scratch_eval_every"], episodes,
            seed=baselines._seed_int(cfg.seed, j, 5), hidden=cfg.policy.hidden,
            env_kwargs=cfg.env_kwargs)
        log(f"  {res.describe()} steps")
        data["tasks"].append({**dataclasses.asdict(res), "describe": res.describe()})
        data.update(provenance())
        write_json(path, data)  # after every task: an interruption loses one task at most
    data["complete"] = True
    write_json(path, data)
    return data


# ---------------------------------------------------------------------------- driver
def run_seed(args: argparse.Namespace, seed: int) -> None:
    cfg = resolve_config(args.config, overrides=list(args.overrides) + [f"seed={seed}"])
    if cfg.family != args.family:
        raise SystemExit(f"config {args.config} is for family {cfg.family}, not {args.family}")
    stages = sorted(set(args.stages or default_stages(cfg.iterations)))
    seed_out = args.out / args.family / f"seed{seed}"
    run_dir = args.runs_dir / args.family / f"seed{seed}"
    ctx = {"config": cfg, "config_name": args.config, "overrides": args.overrides,
           "eval_tasks": args.eval_tasks, "adapt_steps": args.adapt_steps,
           "episodes": args.episodes, "eval_seed": args.eval_seed, "progress": args.progress,
           "baseline_envs": args.baseline_envs,
           "baseline_log_std": args.baseline_init_log_std, "scratch_cap": args.scratch_cap,
           "scratch_eval_every": args.scratch_eval_every, "scratch_tasks": args.scratch_tasks,
           "scratch_target_step": args.scratch_target_step}
    log(f"{args.family} seed {seed}: stages {stages}, results in {seed_out}, runs in {run_dir}")
    prev = latest_saved_stage(saved_stages(seed_out, "meta"), CHECKPOINT_NAME, stages[0]) or 0
    meta = None
    for iteration in stages:
        meta = run_meta_stage(ctx, seed_out, run_dir, iteration, prev)
        if args.baselines:
            run_baseline_stage(ctx, seed_out, run_dir, meta)
        prev = iteration
    if args.baselines and meta is not None and args.scratch_tasks > 0:
        run_scratch(ctx, seed_out, meta)


def regenerate_report(args: argparse.Namespace, readme: Path | None) -> None:
    """The report, and with ``readme`` its results table, from every JSON under ``--out``."""
    write_report(args.out, args.report, readme)
    log(f"report written: {args.report}")
    if readme is not None:
        log(f"results table written: {readme}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=FAMILY_NAMES)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--config", help="shipped config name or YAML path (default <family>-cpu)")
    p.add_argument("--stages", type=int, nargs="+",
                   help="iterations at which to evaluate (default: 4 evenly spaced points "
                        "ending at the config's iterations)")
    p.add_argument("--eval-tasks", type=int, default=20, help="held-out test tasks (M)")
    p.add_argument("--eval-seed", type=int, default=0, help="seed of the test-task draw")
    p.add_argument("--adapt-steps", type=int, default=3, help="adaptation steps (K)")
    p.add_argument("--episodes", type=int, default=None,
                   help="episodes per adaptation step (E; default the config's meta_batch)")
    p.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                   help="run the SB3 baselines (a) and (b)")
    p.add_argument("--baseline-envs", type=int, default=2,
                   help="parallel envs of the multi-task PPO (keep it the same across stages)")
    p.add_argument("--baseline-init-log-std", type=float, default=None,
                   help="initial log-std of the multi-task PPO's actions (default SB3's 0.0, "
                        "std 1; pass the config's policy.init_log_std to start both policies "
                        "with the same action noise)")
    p.add_argument("--scratch-cap", type=int, default=200_000,
                   help="training-step cap of PPO from scratch per task")
    p.add_argument("--scratch-eval-every", type=int, default=10_000,
                   help="training steps between its evaluations")
    p.add_argument("--scratch-tasks", type=int, default=5,
                   help="test tasks (the first ones) for PPO from scratch (0: skip)")
    p.add_argument("--scratch-target-step", type=int, default=1,
                   help="target = the meta-policy's return after this many adaptation steps")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results (JSON, PNG)")
    p.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS,
                   help="meta-training runs and baseline models (large, not committed)")
    p.add_argument("--report", type=Path, default=None,
                   help="report to regenerate (default docs/results.md for the default --out, "
                        "else <out>/results.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set meta_batch.tasks=20 (repeatable)")
    p.add_argument("--report-only", action="store_true",
                   help="only regenerate the report and figures from existing JSON")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    args.runs_dir = args.runs_dir.resolve()
    if args.report is None:
        args.report = DEFAULT_REPORT if args.out == DEFAULT_OUT.resolve() else \
            args.out / "results.md"
    if not args.report_only:
        if args.family is None:
            p.error("--family is required unless --report-only")
        args.config = args.config or f"{args.family}-cpu"
        if args.eval_tasks < 2:
            p.error("--eval-tasks must be >= 2 (confidence intervals over tasks)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    git_commit()  # fixed now, before a long run (see git_commit)
    # The README's table follows the committed results only (not --out elsewhere).
    readme = DEFAULT_README if args.report == DEFAULT_REPORT else None
    if not args.report_only:
        for seed in args.seeds:
            try:
                run_seed(args, seed)
            except TrainingStopped as stop:  # SIGTERM/SIGINT: checkpoint saved, resumable
                raise SystemExit(f"{stop}; or rerun this command, which resumes "
                                 "from it") from None
            regenerate_report(args, readme)
    regenerate_report(args, readme)


if __name__ == "__main__":
    main()
