"""Record a policy before and after adaptation on one held-out task, as GIFs.

Loads a run's last checkpoint, samples one test task, records an episode of the
meta-learned policy (action mean), adapts with the trainer's inner step on
``--episodes`` sampled episodes of that task, and records an episode of the adapted
policy. Same task, same reset seed.

Run::

    python -m bench.videos runs/grasp --out docs/media --name grasp
    python -m bench.videos runs/locomotion --out docs/media --name locomotion --task-seed 3
    python -m bench.videos runs/locomotion --name locomotion_stairs --where terrain=stairs
    python -m bench.videos runs/locomotion --name locomotion_leg --held-out leg

``--where KEY=VALUE`` (repeatable) and ``--held-out FACTOR`` (locomotion: terrain, payload,
leg) take the first test task, from ``--task-seed`` on, whose parameters match.

Writes ``<name>_before.gif``, ``<name>_after.gif`` and ``<name>_videos.json`` (task,
returns, command, commit).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.common import REPO, command_line, machine_info
from metarobot.core.policy import policy_forward
from metarobot.sampling.rollouts import collect_adaptation_rollouts
from metarobot.sampling.sampler import MultiTaskSampler
from metarobot.training.evaluate import load_trained_policy
from sim_envs.registry import env_id, make_family


def record_episode(env: object, model: object, params: dict, seed: int,
                   every: int | None = None, on_step: Callable[[object], None] | None = None,
                   ) -> tuple[list[np.ndarray], float, dict]:
    """Frames (every ``every``-th step; none when ``every`` is None, and the env need not
    render), return and last ``info`` of one deterministic episode (the action mean).
    ``on_step(env)`` runs after every step (a probe's measurement)."""
    obs, _ = env.reset(seed=seed)
    frames = [] if every is None else [env.render()]
    total, done, info, step = 0.0, False, {}, 0
    while not done:
        with torch.no_grad():
            mean, _ = policy_forward(model, params, torch.as_tensor(obs).float()[None])
        obs, reward, terminated, truncated, info = env.step(mean[0].numpy())
        total += float(reward)
        done = terminated or truncated
        step += 1
        if on_step is not None:
            on_step(env)
        if every is not None and (step % every == 0 or done):
            frames.append(env.render())
    return frames, total, info


def pick_task(family: str, first_seed: int, where: list[str],
              held_out: str | None) -> tuple[int, object]:
    """The first test task (and its sampling seed), from ``first_seed`` on, that matches
    every ``KEY=VALUE`` of ``where`` and has the held-out factor ``held_out``."""
    wanted = dict(item.split("=", 1) for item in where)
    for seed in range(first_seed, first_seed + 1000):
        task = make_family(family).sample_tasks(1, "test", seed=seed)[0]
        values = task.params.to_dict()
        unknown = set(wanted) - set(values)
        if unknown:
            raise SystemExit(f"--where: unknown parameter(s) {sorted(unknown)}")
        if any(str(values[k]) != v for k, v in wanted.items()):
            continue
        if held_out is not None:
            from sim_envs.locomotion import held_out_factors
            if held_out not in held_out_factors(task.params):
                continue
        return seed, task
    raise SystemExit("no test task matches --where/--held-out in 1000 seeds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "media")
    parser.add_argument("--name", help="file name prefix (default: the family)")
    parser.add_argument("--task-seed", type=int, default=0)
    parser.add_argument("--episodes", type=int, help="adaptation episodes (default: config's)")
    parser.add_argument("--every", type=int, default=2, help="keep every n-th frame")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="task parameter the task must have, e.g. terrain=stairs")
    parser.add_argument("--held-out", help="locomotion: held-out factor the task must have "
                        "(terrain, payload, leg)")
    args = parser.parse_args()

    import gymnasium
    import imageio.v2 as imageio

    policy = load_trained_policy(args.run)
    cfg = policy.config
    args.task_seed, task = pick_task(cfg.family, args.task_seed, args.where, args.held_out)
    episodes = args.episodes or cfg.meta_batch.episodes
    with MultiTaskSampler(env_id(cfg.family), 0, min(episodes, 10),
                          env_kwargs=cfg.env_kwargs) as sampler:
        rollouts = collect_adaptation_rollouts(
            sampler, policy.model, policy.params, [task], episodes, 1, cfg.inner,
            cfg.advantages, policy.meta_sgd_lr, seed=args.task_seed,
            generator=torch.Generator().manual_seed(args.task_seed))
    adapted = {k: v[0] for k, v in rollouts.adapted.items()}

    env = gymnasium.make(env_id(cfg.family), render_mode="rgb_array", **cfg.env_kwargs)
    env.unwrapped.set_task(task)
    name = args.name or cfg.family
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"command": command_line(),
               "run": str(args.run), "iteration": policy.iteration, "task_seed": args.task_seed,
               "task": task.to_dict(),
               "adaptation_episodes": episodes, "machine": machine_info()}
    if policy.meta_sgd_lr is not None and "context" in policy.meta_sgd_lr:
        summary["context_step_sizes"] = policy.meta_sgd_lr["context"].tolist()
    fps = env.metadata.get("render_fps", 25) / args.every
    for label, params in (("before", policy.params), ("after", adapted)):
        frames, ret, info = record_episode(env, policy.model, params, args.task_seed,
                                           args.every)
        imageio.mimsave(args.out / f"{name}_{label}.gif", frames, duration=1000 / fps, loop=0)
        # The last step's scalar info (progress, power, ...) says what the frames show.
        last_info = {k: float(v) for k, v in info.items()
                     if isinstance(v, (int, float, np.number, np.bool_))}
        summary[label] = {"return": ret, "success": bool(info.get("success", False)),
                          "last_info": last_info}
        if "command" in info:  # locomotion: this episode's joystick command
            summary[label]["command"] = [float(c) for c in info["command"]]
        if "context" in params:  # a context policy: the context this episode was given
            summary[label]["context"] = params["context"].tolist()
        print(f"{label} adaptation: return {ret:.2f}, last info {last_info}")
    env.close()
    (args.out / f"{name}_videos.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
