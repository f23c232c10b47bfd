"""The ``metarobot`` command line: train, evaluate, export, envs, demo, quickstart.

Exit codes: 0 done; 2 a failure the user can cause (a bad config, path, permission, a
full disk, a diverged training, the ``train`` extra not installed), reported as one line
on stderr; 128 + N a training stopped by signal N after saving its checkpoint (130
Ctrl-C, 143 SIGTERM); 1 with a traceback: a bug.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from deploy.extras import missing_train_module, needs_train_extra

#: ``OSError`` numbers that come from the user's paths, permissions or disk, not from a
#: bug: reported as one line with exit code 2.
USER_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                         errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                         errno.ENOTEMPTY, errno.ENAMETOOLONG, errno.ELOOP, errno.EFBIG,
                         errno.EXDEV, errno.EBUSY, errno.ETXTBSY})

EPILOG = """examples:
  metarobot quickstart                       # train on reach, evaluate, export, adapt on device
  metarobot train --config reach-cpu --set iterations=50 --run-dir runs/reach
  metarobot train --resume runs/reach        # continue after an interruption
  metarobot train --config reach-cpu --ray-address auto   # workers on a Ray cluster
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
                       description="Meta-train a policy: PPO-MAML (ProMP) by default; FOMAML, "
                       "Meta-SGD, Reptile, ES-MAML or RL2 by config (outer.algo, inner.*, "
                       "docs/training.md). Checkpoints go to the run directory; Ctrl-C saves "
                       "a checkpoint and stops.")
    p.add_argument("--config", help="shipped config name (reach, reach-cpu, grasp-cpu, ...) "
                   "or a YAML path (default: the family's config)")
    p.add_argument("--family", help="task family (reach, grasp, locomotion, walk)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set inner.lr=0.05 (repeatable)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="torch device")
    p.add_argument("--iterations", type=int, help="number of meta-iterations")
    p.add_argument("--run-dir", type=Path, help="run directory (default runs/<family>-<time>)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue this run from its last checkpoint (with --set, --device, "
                   "--iterations only for: iterations, checkpoint_every, "
                   "max_nonfinite_updates, device, sampler.num_workers, "
                   "sampler.envs_per_worker, sampler.backend, sampler.ray_address)")
    p.add_argument("--ray-address", metavar="ADDRESS",
                   help="run the sampler's workers as Ray actors on the cluster at ADDRESS "
                   "('auto': the one running on this machine; sets sampler.backend=ray and "
                   "sampler.ray_address; --set sampler.backend=ray alone starts a local Ray "
                   "instance); needs the ray extra")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --run-dir (only a metarobot run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("evaluate", help="return and success before/after adaptation",
                       description="Adapt a trained policy on held-out tasks; prints a table "
                       "(mean ± 95% CI over tasks) and saves JSON + PNG.")
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
    # Every command needs the train extra (torch, pybullet, gymnasium, ...); without it,
    # the base install is the device runtime alone: one line naming the extra, exit 2.
    try:
        _import_pybullet_quietly()
        return _run(args)
    except ModuleNotFoundError as err:
        missing = missing_train_module(err)
        if missing is None:
            raise  # not a module of the extra: a broken install or a bug, with its traceback
        return _report(args.command, needs_train_extra(missing), 2)


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; user errors become one line and exit status 2."""
    from metarobot.training.trainer import TrainingDiverged, TrainingStopped

    try:
        return _dispatch(args)
    except TrainingStopped as stop:
        return _report(args.command, str(stop), 128 + stop.signum, prefix="")
    except KeyboardInterrupt:
        return _report(args.command, "interrupted; the last checkpoint written stays", 130,
                       prefix="")
    except (ValueError, TrainingDiverged) as err:
        return _report(args.command, str(err), 2)
    except OSError as err:
        if not is_user_os_error(err):
            raise  # not the user's path, permission or disk: a bug, with its traceback
        return _report(args.command, describe_os_error(err), 2)


def is_user_os_error(err: OSError) -> bool:
    """A filesystem error about the user's paths, permissions or disk (:data:`USER_ERRNOS`),
    or one the code raised with a message about a path (no errno, e.g. an existing
    output directory)."""
    if err.errno is None:
        return isinstance(err, (FileExistsError, FileNotFoundError, IsADirectoryError,
                                NotADirectoryError, PermissionError))
    return err.errno in USER_ERRNOS


def _import_pybullet_quietly() -> None:
    """Import pybullet with its build-time banner (printed on stderr by its C code)
    silenced, so that an error is the only line the user sees. An import error is still
    raised.

    torch is imported first: on a lent GPU machine (2026-12-04) importing torch after
    pybullet crashed inside torch's import (segfault); the other order works.
    """
    if "pybullet" in sys.modules:
        return
    import torch  # noqa: F401
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                import pybullet  # noqa: F401
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def describe_os_error(err: OSError) -> str:
    """``"<what went wrong>: <path>"`` for a filesystem error."""
    paths = [str(p) for p in (err.filename, err.filename2) if p is not None]
    return ": ".join([err.strerror or str(err), *paths])


def _report(command: str, message: str, code: int, prefix: str = "error: ") -> int:
    """Print ``message`` as one line on stderr; returns ``code``."""
    one_line = " ".join(message.split())
    print(f"metarobot {command}: {prefix}{one_line}", file=sys.stderr)
    return code


def _train(args: argparse.Namespace) -> Path:
    """``metarobot train``: a new run, or ``--resume`` with the keys it may change."""
    from metarobot import api

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={args.device}")
    if args.ray_address is not None:
        # JSON-quoted: YAML would read some addresses as numbers (e.g. "1:30").
        overrides += ["sampler.backend=ray", f"sampler.ray_address={json.dumps(args.ray_address)}"]
    if args.resume is None:
        if args.iterations is not None:
            overrides.append(f"iterations={args.iterations}")
        return api.train(args.config, args.family, overrides, args.run_dir,
                         progress=not args.no_progress, overwrite=args.overwrite)
    fixed = [flag for flag, value in (("--config", args.config), ("--family", args.family),
                                      ("--overwrite", args.overwrite)) if value]
    if fixed:
        raise ValueError(f"--resume continues a run with its saved config and cannot take "
                         f"{', '.join(fixed)}; start a new run with --run-dir instead")
    if args.run_dir is not None and args.run_dir.resolve() != args.resume.resolve():
        raise ValueError(f"--run-dir {args.run_dir} and --resume {args.resume} name different "
                         "directories; give only --resume RUN_DIR")
    return api.resume(args.resume, iterations=args.iterations, progress=not args.no_progress,
                      overrides=overrides)


def _dispatch(args: argparse.Namespace) -> int:
    from metarobot import api

    if args.command == "train":
        print(f"run directory: {_train(args)}")
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
