"""``metarobot-deploy``: run an exported bundle in the simulator and adapt it per task.

::

    metarobot-deploy adapt --bundle BUNDLE --env sim_envs/Reach-v0 --split test \\
        --tasks 5 --episodes 10 --adapt-steps 1 --seed 0

For each of ``--tasks`` held-out tasks: reset to the meta-learned parameters, run
``--episodes`` episodes (stochastic actions; they are the adaptation data), adapt with
``--adapt-steps`` inner steps, run ``--episodes`` more with the adapted parameters, and
print mean return and success rate before and after. The core runtime never imports
torch; this command also imports gymnasium and ``sim_envs`` for the simulator.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deploy.bundle import BundleError
from deploy.controller import GymController
from deploy.runtime import AdaptivePolicy


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metarobot-deploy",
        description="Run and adapt an exported metarobot bundle (numpy + onnxruntime).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    adapt = sub.add_parser(
        "adapt", help="adapt the bundle on simulator tasks; print return/success per task",
        description="For each task: E episodes with the meta-learned policy, K inner steps "
                    "on them, E episodes with the adapted policy. Prints a table of mean "
                    "return and success rate before and after adaptation.")
    adapt.add_argument("--bundle", type=Path, required=True, help="bundle directory")
    adapt.add_argument("--env", default=None,
                       help="gymnasium env id (default: the bundle's env_id)")
    adapt.add_argument("--split", default="test", choices=("train", "test"),
                       help="task split to sample from (default: test, held-out tasks)")
    adapt.add_argument("--tasks", type=_positive_int, default=5, help="number of tasks N")
    adapt.add_argument("--episodes", type=_positive_int, default=10,
                       help="episodes E before and after adaptation, per task")
    adapt.add_argument("--adapt-steps", type=_positive_int, default=1,
                       help="inner gradient steps K")
    adapt.add_argument("--seed", type=int, default=0,
                       help="seed of task sampling, env resets and action noise")
    adapt.add_argument("--max-kl", type=_positive_float, default=None,
                       help="reject an adaptation above this KL (nats; default: the bundle's "
                            "rule, set at export from the KL seen in training)")
    adapt.add_argument("--max-update-norm", type=_positive_float, default=None,
                       help="scale down updates with a larger L2 norm (default: the bundle's "
                            "rule, else 10)")
    return parser


def run_episodes(controller: GymController, policy: AdaptivePolicy,
                 episodes: int) -> tuple[list[float], list[bool]]:
    """Run ``episodes`` full episodes, recording them in ``policy``; returns their
    undiscounted returns and successes (``info["success"]`` at the last step)."""
    returns, successes = [], []
    for _ in range(episodes):
        controller.start_episode()
        total, done = 0.0, False
        while not done:
            obs = controller.read_observation()
            action = policy.act(obs)
            controller.apply_action(action)
            reward = controller.read_reward()
            terminated, truncated = controller.episode_status()
            policy.observe(obs, action, reward, terminated, truncated)
            total += reward
            done = terminated or truncated
        returns.append(total)
        successes.append(bool(controller.info.get("success", False)))
    return returns, successes


def cmd_adapt(args: argparse.Namespace) -> int:
    import gymnasium

    import sim_envs  # noqa: F401  (registers the sim_envs/* ids)

    given = {"max_kl": args.max_kl, "max_update_norm": args.max_update_norm}
    try:
        policy = AdaptivePolicy.load(args.bundle, seed=args.seed)
        # The bundle's recorded rules (e.g. max_kl from training), overridden by flags given.
        policy.safety = dataclasses.replace(
            policy.safety, **{k: v for k, v in given.items() if v is not None})
    except BundleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    env_id = args.env or policy.bundle.env_id
    env = gymnasium.make(env_id, **policy.bundle.env_kwargs)
    family = getattr(getattr(env.unwrapped, "family", None), "name", None)
    if family is not None and family != policy.bundle.family:
        print(f"error: {env_id} simulates family {family!r}, the bundle is for "
              f"{policy.bundle.family!r}", file=sys.stderr)
        return 2
    if env.observation_space.shape != (policy.obs_dim,):
        print(f"error: {env_id} observations are {env.observation_space.shape}, the bundle "
              f"expects ({policy.obs_dim},)", file=sys.stderr)
        return 2
    tasks = env.unwrapped.sample_tasks(args.tasks, split=args.split, seed=args.seed)
    header = (f"{'task':<28} {'return before':>13} {'return after':>12} {'success before':>14} "
              f"{'success after':>13}  adaptation")
    print(f"bundle {args.bundle} ({policy.bundle.family}), env {env_id}, split {args.split}, "
          f"{args.episodes} episodes before/after, {args.adapt_steps} inner step(s)")
    print(header)
    print("-" * len(header))
    rows = []
    with policy:
        for i, task in enumerate(tasks):
            policy.reset_adaptation()
            env.unwrapped.set_task(task)
            controller = GymController(env, seed=args.seed * 100_003 + i)
            pre_ret, pre_succ = run_episodes(controller, policy, args.episodes)
            report = policy.adapt(args.adapt_steps)
            post_ret, post_succ = run_episodes(controller, policy, args.episodes)
            row = (np.mean(pre_ret), np.mean(post_ret), np.mean(pre_succ), np.mean(post_succ))
            rows.append(row)
            status = (f"accepted, kl {report.kl:.3g}" if report.accepted
                      else f"rejected: {report.reason}")
            print(f"{task.task_id:<28} {row[0]:>13.2f} {row[1]:>12.2f} {row[2]:>14.2f} "
                  f"{row[3]:>13.2f}  {status}")
    mean = np.mean(rows, axis=0)
    print("-" * len(header))
    print(f"{'mean':<28} {mean[0]:>13.2f} {mean[1]:>12.2f} {mean[2]:>14.2f} {mean[3]:>13.2f}")
    env.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``metarobot-deploy``; returns the process exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "adapt":
        return cmd_adapt(args)
    raise AssertionError(f"unhandled command {args.command}")  # argparse restricts choices


if __name__ == "__main__":
    sys.exit(main())
