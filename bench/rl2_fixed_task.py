"""Sanity check of RL2's update on a real family: recurrent PPO on ONE fixed task.

RL2 (``outer.algo: rl2``) did not learn reach's hidden goal on the 2-core budget
(``bench/results/meta_rl2_tuned/reach/notes.md``). This script separates the update from
the meta-problem: the same trainer, config and sampler, but every task of every batch is
the same training task, so there is nothing to infer and the GRU policy only has to learn
to reach one goal, as plain PPO does. If its return does not rise here, the update or its
advantages are broken; if it does, RL2's difficulty is the meta-problem (a hidden goal to
infer from the reward) on this budget.

Writes ``rl2_fixed_task.json`` (the per-iteration training returns, entropies and the
command) to ``--out``::

    python -m bench.rl2_fixed_task --episodes 1 --iterations 40 \
        --out bench/results/meta_rl2_tuned/reach/fixed_task_e1
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import command_line, machine_info, write_json
from metarobot import api
from metarobot.training.runlog import read_log
from metarobot.training.trainer import MetaTrainer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="reach-rl2-cpu", help="an RL2 config")
    parser.add_argument("--episodes", type=int, default=1, help="episodes per trial (E)")
    parser.add_argument("--tasks", type=int, default=10, help="trials per batch")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0, help="training seed; task: seed 0's "
                        "first training task")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    cfg = api.resolve_config(args.config, overrides=[
        f"meta_batch.episodes={args.episodes}", f"meta_batch.tasks={args.tasks}",
        f"seed={args.seed}", "sampler.num_workers=0", f"sampler.envs_per_worker={args.tasks}",
        "device=cpu", f"iterations={args.iterations}", f"checkpoint_every={args.iterations}"])
    if cfg.outer.algo != "rl2":
        parser.error(f"--config {args.config} is not an RL2 config (outer.algo: rl2)")
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = MetaTrainer(cfg, run_dir, progress=False)
        task = trainer.family.sample_tasks(1, "train", seed=0)[0]
        trainer.family.sample_tasks = lambda n, split="train", seed=None: [task] * n
        trainer.train()
        trainer.close()
        rows = list(read_log(run_dir).values())
    curve = {key: [row[key] for row in rows] for key in
             ("iteration", "env_steps", "return/trial", "success/post", "outer/entropy")}
    first, last = curve["return/trial"][0], curve["return/trial"][-1]
    print(f"{cfg.family} task {task.task_id}: trial return {first:.2f} -> {last:.2f} in "
          f"{args.iterations} iterations ({int(curve['env_steps'][-1])} env steps)")
    write_json(args.out / "rl2_fixed_task.json", {
        "command": command_line(), "machine": machine_info(), "config": cfg.to_dict(),
        "task": task.to_dict(), "curve": curve})


if __name__ == "__main__":
    main()
