"""Which meta-learner wins where: one table per family from ``bench/results.py`` outputs.

Each learner's runs are ordinary ``bench/results.py`` results (one ``--out`` folder per
learner, ``--set outer.algo=...``); this script only reads them. For every learner it takes
the stage given on the command line in each seed (``meta_it<stage>.json``), and multi-task
PPO from the ``baseline_it<stage>.json`` beside one learner's (``--baseline``). It reports,
after 0..K adaptation steps of E episodes each (the same protocol for every learner), the
return and success as mean ± 95% CI over the seeds' task means (over tasks when one seed),
the env steps and the wall time per iteration, and writes
``bench/results/learners/<family>.{json,md,png}``.

Example::

    python -m bench.learners --family reach \\
        --learner PPO-MAML=bench/results/meta:60 --learner ES-MAML=bench/results/meta_es:30 \\
        --baseline PPO-MAML
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import command_line, write_json
from bench.stats import across, load_family

DEFAULT_OUT = Path("bench/results/learners")


def _row(name: str, entries: list[dict[str, Any]], stage: int, kind: str) -> dict[str, Any]:
    """A learner's row from its seeds' :func:`bench.stats.load_family` entries at ``stage``
    (``kind``: meta or baseline); statistics are :func:`bench.stats.across`'s."""
    records = [e[kind][stage] for e in entries]
    returns, success = (across(entries, stage, kind, key) for key in ("returns", "success"))
    assert returns is not None and success is not None  # entries all have the stage
    if kind == "meta":
        env_steps = [r["env_steps"] for r in records]
        wall = float(np.mean([r["timing"]["iteration_s_mean"] for r in records]))
    else:
        env_steps, wall = [r["baseline_env_steps"] for r in records], float("nan")
    return {
        "learner": name, "seeds": [r["seed"] for r in records],
        "files": [str(e["dir"] / f"{kind}_it{stage:05d}.json") for e in entries],
        "env_steps": int(np.mean(env_steps)), "iteration_s": wall,
        "config": records[0].get("config", {}).get("outer", {}).get("algo", kind),
        "return": returns, "success": success,
        "commits": sorted({r.get("git_commit", "?") for r in records}),
        "commands": sorted({r.get("command", "?") for r in records}),
    }


def collect(family: str, learners: list[tuple[str, Path, int]], baseline: str | None,
            seeds: list[int]) -> list[dict[str, Any]]:
    rows = []
    for name, root, stage in learners:
        loaded = load_family(root, family)
        entries = [loaded[s] for s in seeds if s in loaded and stage in loaded[s]["meta"]]
        if not entries:
            raise SystemExit(f"{name}: no results at {root / family}/seed*/"
                             f"meta_it{stage:05d}.json for seeds {seeds}")
        rows.append(_row(name, entries, stage, "meta"))
        if name == baseline:
            with_base = [e for e in entries if stage in e["baseline"]]
            if with_base:
                rows.append(_row("multi-task PPO", with_base, stage, "baseline"))
    return rows


def markdown(family: str, rows: list[dict[str, Any]]) -> str:
    steps = min(len(r["return"]) for r in rows)
    head = " | ".join(f"after {k}" if k else "before" for k in range(steps))
    lines = [f"### {family}: return (success) after k adaptation steps", "",
             f"| learner | seeds | env steps | s / iteration | {head} |",
             "|---|---|---|---|" + "---|" * steps]
    for r in rows:
        cells = " | ".join(f"{m:.1f} ± {c:.1f} ({s:.2f})" for (m, c), (s, _)
                           in zip(r["return"][:steps], r["success"][:steps]))
        wall = "-" if np.isnan(r["iteration_s"]) else f"{r['iteration_s']:.1f}"
        lines.append(f"| {r['learner']} | {len(r['seeds'])} | {r['env_steps']:,} | {wall} "
                     f"| {cells} |")
    lines += ["", "Mean ± 95% CI over the seeds' task means (over tasks for one seed); "
              "success in brackets. s / iteration: each learner's own runs, which may have "
              "shared the machine with other jobs."]
    return "\n".join(lines) + "\n"


def plot(family: str, rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = min(len(r["return"]) for r in rows)
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        mean = [m for m, _ in r["return"][:steps]]
        ci = [0 if np.isnan(c) else c for _, c in r["return"][:steps]]
        ax.bar(np.arange(steps) + i * width, mean, width, yerr=ci, label=r["learner"])
    ax.set_xticks(np.arange(steps) + 0.4 - width / 2, [str(k) for k in range(steps)])
    ax.set_xlabel("adaptation steps (E episodes each)")
    ax.set_ylabel("return on held-out test tasks")
    ax.set_title(f"{family}: meta-learners")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _learner(text: str) -> tuple[str, Path, int]:
    try:
        name, rest = text.split("=", 1)
        root, stage = rest.rsplit(":", 1)
        return name, Path(root), int(stage)
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected NAME=RESULTS_DIR:STAGE, got {text!r}") from err


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", required=True)
    p.add_argument("--learner", type=_learner, action="append", required=True,
                   metavar="NAME=RESULTS_DIR:STAGE",
                   help="a learner's bench/results.py --out folder and the stage to read")
    p.add_argument("--baseline", default=None,
                   help="read multi-task PPO from this learner's baseline_it<stage>.json")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    rows = collect(args.family, args.learner, args.baseline, args.seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(args.family, rows)
    (args.out / f"{args.family}.md").write_text(text)
    write_json(args.out / f"{args.family}.json",
               {"family": args.family, "rows": rows, "command": command_line()})
    plot(args.family, rows, args.out / f"{args.family}.png")
    print(text)


if __name__ == "__main__":
    main()
