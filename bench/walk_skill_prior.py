"""Walk from a gait prior: pretrain a walker that is told the direction, then meta-train
its direction input as a per-episode latent context.

Why: meta-trained from scratch, walk's pre-update policy walks forward in every episode,
and a latent input learned from scratch never came to steer the gait
(``bench/results/meta_latent/walk/notes.md``). Here the latent steers it from the start:

1. **Pretrain** (training tasks only): the ordinary trainer on walk with the direction
   observed (``env_kwargs: {observe_command: true, command_frame: F}``: the command is the
   last of the observation), as multi-task PPO (an inner step of rate 1e-6, first order).
   In the base frame (default) the command turns with the robot, and the walker goes
   backward by turning around until it points ahead (``bench/walk_prior_probe.py``).
2. **Warm start** a run of ``--config`` (a context with ``policy.context_noise``): the
   pretrained policy whose first layer reads the context where it read the command, the
   context set to the zero command (neither direction), the observation normaliser copied.
   The default, ``walk-skill-yaw-cpu``, observes the yaw and reads a world-frame context
   rotated into the base frame (``policy.rotate_context``): a constant context is then a
   command the walker can turn toward. ``walk-skill-cpu`` (the context replaces the
   base-frame command, held constant) and ``walk-skill-world-cpu`` (a world-frame prior)
   are the earlier variants. The run is saved as iteration 0 of ``RUNS/walk/seedS`` and
   counts the pretraining's env steps as its own.
3. ``python -m bench.results --family walk --config CONFIG --seeds S --stages 0 10 40
   --no-baselines --eval-tasks 20 --runs-dir RUNS --out OUT`` evaluates it before any
   meta-training (stage 0) and continues it like any run. At test time the direction is
   hidden: the adaptation step sees rewards only.

Usage: ``python -m bench.walk_skill_prior --seed 0 --runs-dir RUNS`` (resumable: a finished
pretraining is reused, an existing warm start is left alone).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from metarobot import api
from metarobot.core.policy import OBS_CLIP
from metarobot.training.checkpoint import CHECKPOINT_NAME, load_run
from metarobot.training.evaluate import load_trained_policy
from metarobot.training.trainer import MetaTrainer

#: The pretraining: walk-cpu, direction observed, multi-task PPO (a negligible inner step).
PRETRAIN_OVERRIDES = ["inner.lr=1e-6", "inner.first_order=true", "inner.meta_sgd=false",
                      "meta_batch.episodes=4"]
#: The meta-training config for each command frame (its context: the command's size).
CONFIGS = {"base": "walk-skill-yaw-cpu", "world": "walk-skill-world-cpu"}
#: The first layer's parameters (its inputs: normalised observation, then the context).
FIRST_WEIGHT, FIRST_BIAS = "mean_net.0.weight", "mean_net.0.bias"


def pretrain(run_dir: Path, iterations: int, seed: int, workers: int,
             command_frame: str = "base", overrides: tuple[str, ...] = ()) -> Path:
    """Train (or continue) the direction-observing walker to ``iterations``, its command
    in ``command_frame`` (:class:`sim_envs.walk.WalkEnv`; ``overrides``: more
    ``key=value`` settings of a new run)."""
    if (run_dir / CHECKPOINT_NAME).exists():
        if load_run(run_dir).iteration >= iterations:
            return run_dir
        MetaTrainer.resume(run_dir, progress=False, iterations=iterations).train()
        return run_dir
    cfg = api.resolve_config("walk-cpu", overrides=PRETRAIN_OVERRIDES + [
        f"env_kwargs={{observe_command: true, command_frame: {command_frame}}}",
        f"seed={seed}", f"iterations={iterations}", f"sampler.num_workers={workers}", *overrides])
    MetaTrainer(cfg, run_dir, progress=False).train()
    return run_dir


def warm_start(prior_dir: Path, config: str, run_dir: Path, seed: int, workers: int) -> Path:
    """Write iteration 0 of a ``config`` run initialised from the pretrained walker.

    The context takes the command's place in the first layer. With
    ``policy.rotate_context`` (a base-frame prior, the run's observation ending in the yaw)
    the context is the command in the world frame, raw (m/s): the prior's normalisation
    of the command is folded into the first layer, whose yaw columns start at 0, so the
    policy given yaw ``psi`` and context ``w`` is the prior told ``R(psi)^T w``.
    """
    prior = load_trained_policy(prior_dir)
    prior_state = load_run(prior_dir)
    cfg = api.resolve_config(config, overrides=[f"seed={seed}",
                                                f"sampler.num_workers={workers}"])
    trainer = MetaTrainer(cfg, run_dir, progress=False)
    obs_dim, rotate = trainer.obs_dim, cfg.policy.rotate_context
    proprio = obs_dim - 2 if rotate else obs_dim  # a rotated context's yaw: the last two
    command_dims = prior.model.obs_dim - proprio  # the prior's command: its last
    if command_dims < 1 or cfg.policy.context_dim != command_dims:
        raise SystemExit(f"{config} needs policy.context_dim {command_dims} (the prior's "
                         f"command) and the walk observation ({obs_dim}) without the command")
    if set(trainer.params) - {"context"} != set(prior.params):
        raise SystemExit(f"{config}'s policy does not have the pretrained policy's layers")
    norm = prior_state.normalizer
    mean, var = norm["mean"].double(), norm["var"].double()
    command_mean, command_std = mean[proprio:], torch.sqrt(var[proprio:] + 1e-8)
    with torch.no_grad():
        for name, value in prior.params.items():
            if not (rotate and name in (FIRST_WEIGHT, FIRST_BIAS)):
                trainer.params[name].copy_(value)  # first layer: obs columns, then command's
        if rotate:
            weight, bias = prior.params[FIRST_WEIGHT].double(), prior.params[FIRST_BIAS]
            command_weight = weight[:, proprio:] / command_std
            trainer.params[FIRST_WEIGHT].copy_(torch.cat(
                [weight[:, :proprio], torch.zeros(len(weight), 2, dtype=torch.float64),
                 command_weight], 1).float())
            trainer.params[FIRST_BIAS].copy_(bias - (command_weight @ command_mean).float())
            context = torch.zeros(2, dtype=torch.float64)  # the zero command
            mean = torch.cat([mean[:proprio], torch.zeros(2, dtype=torch.float64)])
            var = torch.cat([var[:proprio], torch.ones(2, dtype=torch.float64)])
        else:  # the zero command, normalised
            context = (-command_mean / command_std).clamp(-OBS_CLIP, OBS_CLIP)
            mean, var = mean[:obs_dim], var[:obs_dim]
        trainer.params["context"].copy_(context.float())
    trainer.normalizer.load_state_dict({"mean": mean, "var": var, "count": norm["count"]})
    trainer.model.set_normalizer(mean.float(), var.float())
    trainer.env_steps = prior_state.algo_state.env_steps
    path = trainer.save()
    trainer.close()
    print(f"warm start: {path} (context {context.tolist()}, "
          f"{trainer.env_steps} env steps of pretraining)", flush=True)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--command-frame", choices=sorted(CONFIGS), default="base",
                   help="the pretraining's command (sim_envs.walk): 'base' turns with the "
                        "robot (2 numbers), 'world' is the constant x velocity (1 number)")
    p.add_argument("--config", default=None,
                   help="the meta-training config, a latent context of the command "
                        "(default: walk-skill-yaw-cpu for 'base', walk-skill-world-cpu for "
                        "'world')")
    p.add_argument("--pretrain-iterations", type=int, default=60,
                   help="pretraining iterations (60: the measured runs')")
    p.add_argument("--runs-dir", type=Path, required=True,
                   help="pretraining in RUNS/walk-prior/seedS, the warm start in "
                        "RUNS/walk/seedS (bench.results' layout)")
    p.add_argument("--workers", type=int, default=2, help="sampler workers")
    args = p.parse_args(argv)
    if args.pretrain_iterations < 1:
        p.error("--pretrain-iterations must be >= 1")
    prior_dir = pretrain(args.runs_dir / "walk-prior" / f"seed{args.seed}",
                         args.pretrain_iterations, args.seed, args.workers, args.command_frame)
    run_dir = args.runs_dir / "walk" / f"seed{args.seed}"
    if (run_dir / CHECKPOINT_NAME).exists():
        print(f"{run_dir} already has a checkpoint: left alone", flush=True)
        return
    warm_start(prior_dir, args.config or CONFIGS[args.command_frame], run_dir, args.seed,
               args.workers)


if __name__ == "__main__":
    main()
