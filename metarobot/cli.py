"""The ``metarobot`` command line: train, evaluate, export, envs, demo, quickstart."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EPILOG = """examples:
  metarobot quickstart                       # train on reach, evaluate, export, adapt on device
  metarobot train --config reach-cpu --set iterations=50 --run-dir runs/reach
  metarobot train --resume runs/reach        # continue after an interruption
  metarobot evaluate runs/reach --split test --adapt-steps 3
  metarobot export runs/reach --out bundles/reach
  metarobot envs                             # task families and their parameters
  metarobot demo --family grasp --video-dir videos/
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metarobot", description="Meta-reinforcement learning (PPO-MAML) for robots.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="meta-train a policy on a task family",
                       description="Meta-train a policy with PPO-MAML. Checkpoints go to the "
                       "run directory; Ctrl-C saves a checkpoint and stops.")
    p.add_argument("--config", help="shipped config name (reach, reach-cpu, grasp-cpu, ...) "
                   "or a YAML path (default: the family's config)")
    p.add_argument("--family", help="task family (reach, grasp, locomotion, walk)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set inner.lr=0.05 (repeatable)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="torch device")
    p.add_argument("--iterations", type=int, help="number of meta-iterations")
    p.add_argument("--run-dir", type=Path, help="run directory (default runs/<family>-<time>)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue this run from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("evaluate", help="return and success before/after adaptation",
                       description="Adapt a trained policy on held-out tasks; prints a table "
                       "(mean ± 95%% CI over tasks) and saves JSON + PNG.")
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--adapt-steps", type=int, default=3, help="adaptation steps K")
    p.add_argument("--tasks", type=int, default=20, help="number of tasks")
    p.add_argument("--episodes", type=int, help="episodes per task and step "
                   "(default: the training meta-batch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="output directory (default RUN/eval)")

    p = sub.add_parser("export", help="export policy and adaptation step to ONNX",
                       description="Write policy.onnx, adapt.onnx (+ unrolled variants) and "
                       "manifest.json for the torch-free device runtime.")
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--out", type=Path, required=True, help="bundle directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")

    p = sub.add_parser("envs", help="list task families and their parameters")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("demo", help="run episodes of a task family and save a video",
                       description="Random-action episodes on sampled tasks, recorded to MP4.")
    p.add_argument("--family", default="reach")
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--video-dir", type=Path, default=Path("videos"))

    p = sub.add_parser("quickstart", help="the whole pipeline on a built-in default (reach)",
                       description="Meta-train on Reach, evaluate on held-out tasks, export the "
                       "bundle, adapt with the device runtime, write a report.")
    p.add_argument("--config", default="quickstart", help="shipped config name or YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--run-dir", type=Path, default=Path("runs/quickstart"))
    p.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (ValueError, FileExistsError) as err:
        print(f"metarobot {args.command}: error: {err}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    from metarobot import api

    if args.command == "train":
        if args.resume is not None:
            run = api.resume(args.resume, iterations=args.iterations,
                             progress=not args.no_progress)
        else:
            overrides = list(args.overrides)
            if args.device:
                overrides.append(f"device={args.device}")
            if args.iterations is not None:
                overrides.append(f"iterations={args.iterations}")
            run = api.train(args.config, args.family, overrides, args.run_dir,
                            progress=not args.no_progress)
        print(f"run directory: {run}")
    elif args.command == "evaluate":
        result = api.evaluate(args.run, args.split, args.adapt_steps, args.tasks, args.episodes,
                              args.seed, args.out)
        print(result.table())
    elif args.command == "export":
        print(f"bundle: {api.export(args.run, args.out, overwrite=args.overwrite)}")
    elif args.command == "envs":
        envs = api.list_envs()
        if args.json:
            print(json.dumps(envs, indent=2))
        else:
            for env in envs:
                print(f"{env['family']}  ({env['id']})\n  split: {env['split']}")
                for name, spec in env["params"].items():
                    choices = spec["choices"]
                    if choices is None:
                        rng = f"[{spec['low']:g}, {spec['high']:g}]"
                    elif len(choices) > 6:  # e.g. grasp's object catalogue
                        rng = f"{len(choices)} choices ({', '.join(choices[:3])}, ...)"
                    else:
                        rng = ", ".join(map(str, choices))
                    print(f"  {name:<16} {spec['unit']:<5} {rng!s:<28} "
                          f"{'hidden' if spec['hidden'] else 'observed'}  {spec['doc']}")
    elif args.command == "demo":
        from metarobot.demo import run_demo

        for path in run_demo(args.family, args.split, args.episodes, args.seed, args.video_dir):
            print(f"video: {path}")
    elif args.command == "quickstart":
        from metarobot.quickstart import run_quickstart

        run_quickstart(args.config, args.overrides, args.run_dir, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
