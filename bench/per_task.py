"""Per-task table of one results stage: each held-out task's parameters next to its returns.

A family's mean ± CI hides which tasks the policy solves. This script puts, for one seed
and one stage of ``bench/results.py``, every test task's parameters beside

* the meta-policy's return before adaptation and after 1 and K adaptation steps,
* baseline (a)'s return and success after one fine-tuning step (if that stage has it),
* a **zero-action reference**, measured here: the return of the action 0 on the task,
  averaged over ``--reference-episodes`` episodes. Action 0 holds the start pose
  (locomotion, walk: the standing joint targets) or keeps the arm still (reach, grasp),
  so it is the score of doing nothing useful.

It reads ``meta_it<N>.json`` (and ``baseline_it<N>.json``) from the seed's results folder,
rebuilds the test tasks from the family and the evaluation seed (and checks their ids),
prints a Markdown table with a few counts below it, and writes ``per_task_it<N>.json`` and
``per_task_it<N>.md`` beside the stage's JSON. ``python -m bench.results --report-only`` links them.

Usage::

    python -m bench.per_task --family locomotion --seed 0 --iteration 100 --sort-by speed
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np

from bench.common import evaluated_test_tasks, read_json, write_json
from bench.results import DEFAULT_OUT, provenance, stage_name
from metarobot.training.evaluate import mean_ci95
from sim_envs.registry import env_id, register_envs
from sim_envs.tasks import Task


def zero_action_returns(family: str, tasks: list[Task], episodes: int,
                        env_kwargs: dict[str, Any]) -> np.ndarray:
    """Mean return of the all-zero action on each task, ``(len(tasks),)``."""
    register_envs()
    env = gymnasium.make(env_id(family), **env_kwargs)
    zero = np.zeros(env.action_space.shape, dtype=env.action_space.dtype)
    out = np.zeros(len(tasks))
    try:
        for i, task in enumerate(tasks):
            total = 0.0
            for episode in range(episodes):
                env.reset(seed=episode, options={"task": task})
                done = False
                while not done:
                    _, reward, terminated, truncated, _ = env.step(zero)
                    total += float(reward)
                    done = terminated or truncated
            out[i] = total / episodes
    finally:
        env.close()
    return out


def param_text(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def per_task_rows(meta: dict[str, Any], baseline: dict[str, Any] | None,
                  tasks: list[Task], reference: np.ndarray) -> list[dict[str, Any]]:
    """One dict per task: id, parameters, meta/baseline returns and success, reference."""
    ev = meta["evaluation"]
    returns, success = np.asarray(ev["returns"]), np.asarray(ev["success"])
    rows = []
    for i, task in enumerate(tasks):
        row: dict[str, Any] = {
            "task_id": task.task_id, "params": task.params.to_dict(),
            "meta_return": returns[:, i].tolist(), "meta_success": success[:, i].tolist(),
            "zero_action_return": float(reference[i])}
        if baseline is not None:
            row["baseline_a_return"] = np.asarray(baseline["returns"])[:, i].tolist()
            row["baseline_a_success"] = np.asarray(baseline["success"])[:, i].tolist()
        rows.append(row)
    return rows


#: ``--sort-by`` also summarises each value of the parameter when it has at most this many.
MAX_GROUPS = 8


def group_lines(rows: list[dict[str, Any]], param: str) -> list[str]:
    """Per value of ``param`` (a few at most): meta success before, after 1 and after K
    steps, and the return after 1 step (mean ± 95% CI over the value's tasks)."""
    values = sorted({r["params"][param] for r in rows})
    if len(values) > MAX_GROUPS:
        return []
    k = len(rows[0]["meta_return"]) - 1
    lines = []
    for value in values:
        group = [r for r in rows if r["params"][param] == value]
        success = np.array([r["meta_success"] for r in group]).mean(0)
        m, c = mean_ci95(np.array([r["meta_return"][1] for r in group]))
        lines.append(f"- {param} {param_text(value)} ({len(group)} tasks): meta success "
                     f"{success[0]:.2f} before, {success[1]:.2f} after 1 step, "
                     f"{success[k]:.2f} after {k}; return after 1 step {m:.1f} ± {c:.1f}.")
    return lines


def counts(rows: list[dict[str, Any]], sort_by: str | None = None) -> list[str]:
    """A few plain sentences under the table: how often, and how far apart (and per value
    of ``sort_by``, :func:`group_lines`)."""
    n = len(rows)
    after1 = np.array([r["meta_return"][1] for r in rows])
    ref = np.array([r["zero_action_return"] for r in rows])
    m, c = mean_ci95(after1)
    rm, rc = mean_ci95(ref)
    lines = [f"- Meta after 1 step: {m:.1f} ± {c:.1f} (range {after1.min():.1f} to "
             f"{after1.max():.1f}); zero-action reference: {rm:.1f} ± {rc:.1f} "
             f"(range {ref.min():.1f} to {ref.max():.1f}).",
             f"- Meta after 1 step above the zero-action reference on "
             f"{int((after1 > ref).sum())} of {n} tasks."]
    if "baseline_a_return" in rows[0]:
        base1 = np.array([r["baseline_a_return"][1] for r in rows])
        succ = [i for i, r in enumerate(rows) if r["baseline_a_success"][1] > 0]
        lines += [f"- Meta after 1 step above baseline (a) after 1 step on "
                  f"{int((after1 > base1).sum())} of {n} tasks.",
                  f"- Tasks where baseline (a) succeeds after 1 step: {len(succ)} of {n}"
                  + (f" (rows {', '.join(str(i + 1) for i in succ)})." if succ else ".")]
    return lines + (group_lines(rows, sort_by) if sort_by is not None else [])


def markdown(rows: list[dict[str, Any]], header: str, sort_by: str | None = None) -> str:
    # Generator seeds (terrain_seed) tell a reader nothing; they stay in the JSON.
    names = [p for p in rows[0]["params"] if not p.endswith("seed")]
    k = len(rows[0]["meta_return"]) - 1
    has_base = "baseline_a_return" in rows[0]
    cols = ["#", *names, "meta pre", "meta after 1", f"meta after {k}", "meta success 1"]
    cols += ["(a) after 1", "(a) success 1"] if has_base else []
    cols += ["zero action"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for i, r in enumerate(rows):
        cells = [str(i + 1), *(param_text(r["params"][p]) for p in names),
                 f"{r['meta_return'][0]:.1f}", f"{r['meta_return'][1]:.1f}",
                 f"{r['meta_return'][k]:.1f}", f"{r['meta_success'][1]:.2f}"]
        if has_base:
            cells += [f"{r['baseline_a_return'][1]:.1f}", f"{r['baseline_a_success'][1]:.2f}"]
        cells.append(f"{r['zero_action_return']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", *counts(rows, sort_by), ""])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", required=True, help="task family (reach, grasp, ...)")
    p.add_argument("--seed", type=int, required=True, help="training seed of the results")
    p.add_argument("--iteration", type=int, required=True, help="stage (meta-iteration)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="results root of bench/results.py (default: %(default)s)")
    p.add_argument("--reference-episodes", type=int, default=3,
                   help="episodes of the zero action per task (default: %(default)s)")
    p.add_argument("--sort-by", default=None,
                   help="order the rows by this task parameter and, when it has at most "
                   f"{MAX_GROUPS} values, summarise each (default: evaluation order)")
    args = p.parse_args(argv)
    if args.reference_episodes < 1:
        p.error("--reference-episodes must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    folder = args.out / args.family / f"seed{args.seed}"
    meta_path = folder / f"meta_{stage_name(args.iteration)}.json"
    if not meta_path.exists():
        raise SystemExit(f"no results for that stage: {meta_path} does not exist "
                         f"(run python -m bench.results for it first)")
    meta = read_json(meta_path)
    base_path = folder / f"baseline_{stage_name(args.iteration)}.json"
    baseline = read_json(base_path) if base_path.exists() else None
    ev = meta["evaluation"]
    tasks = evaluated_test_tasks(args.family, ev["task_ids"], meta["eval_seed"], meta_path)
    if baseline is not None and baseline["task_ids"] != ev["task_ids"]:
        raise SystemExit(f"{base_path}: evaluated on other tasks than {meta_path}")
    if args.sort_by is not None and args.sort_by not in tasks[0].params.to_dict():
        raise SystemExit(f"--sort-by {args.sort_by!r}: not a parameter of {args.family} "
                         f"(one of {list(tasks[0].params.to_dict())})")
    reference = zero_action_returns(args.family, tasks, args.reference_episodes,
                                    meta["config"].get("env_kwargs") or {})
    rows = per_task_rows(meta, baseline, tasks, reference)
    if args.sort_by is not None:
        rows.sort(key=lambda r: r["params"][args.sort_by])
    header = (f"{args.family}, seed {args.seed}, iteration {args.iteration} "
              f"({meta['env_steps']:,} env steps): returns per held-out test task "
              f"(meta: mean over {ev['episodes']} episodes; zero action: mean over "
              f"{args.reference_episodes})")
    text = markdown(rows, header, args.sort_by)
    print(text)
    name = f"per_task_{stage_name(args.iteration)}"
    write_json(folder / f"{name}.json",
               {"family": args.family, "seed": args.seed, "iteration": args.iteration,
                "env_steps": meta["env_steps"], "sort_by": args.sort_by,
                "reference_episodes": args.reference_episodes, "tasks": rows,
                **provenance()})
    (folder / f"{name}.md").write_text(f"{text}\nCommand: `{provenance()['command']}`\n")


if __name__ == "__main__":
    main()
