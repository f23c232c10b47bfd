"""``metarobot-deploy``: run an exported bundle in the simulator and adapt it per task.

::

    metarobot-deploy adapt --bundle BUNDLE --env sim_envs/Reach-v0 --split test \\
        --tasks 5 --episodes 10 --adapt-steps 1 --seed 0
    metarobot-deploy adapt --bundle reach     # a bundle shipped in assets/bundles/

``--bundle`` is a bundle directory or the name of a shipped bundle (an existing path
wins); an unknown name is an error that lists the shipped names.

For each of ``--tasks`` held-out tasks (each task's episodes on one
:class:`~deploy.controller.GymController`, stochastic actions), by the bundle's kind of
adaptation (``metadata["adaptation"]``):

- gradient (:class:`~deploy.runtime.AdaptivePolicy`): reset to the meta-learned
  parameters, run ``--episodes`` E episodes (the adaptation data), take
  ``--adapt-steps`` K inner steps on them, run E more with the adapted parameters;
- memory, RL2 (:class:`~deploy.recurrent.RecurrentPolicy`): reset the hidden state (a new
  task), run E episodes from the empty memory, then K more blocks of E episodes, the state
  carried across all of them; "after" is the last block, whose episodes have the memory
  of K x E earlier ones (the protocol of ``metarobot evaluate`` for RL2, so the columns
  compare with a gradient bundle's after K steps). The runtime's safety checks stay on:
  a hidden state it had to reset after a fault is counted in the adaptation column.

Either way it prints mean return and success rate before and after, per task and their
mean; ``--json PATH`` also writes them, each episode's return and the command that made
them to a JSON file (atomically), so a figure quoted in the docs has its record.

The gradient-step flags (``--max-kl``, ``--max-update-norm``, ``--trial-episodes``,
``--worse-margin``) are an error with a memory bundle, which takes no step.

The core runtime never imports torch; this command also imports gymnasium and
``sim_envs`` for the simulator, which the base install lacks: without
``pip install 'metarobot[train]'`` it stops with one line naming the extra.

Every failure a user can cause (a bad bundle, an unknown or mismatched env, bad
arguments, an unreadable path) is one line on stderr and exit status 2; a traceback
(exit 1) means a bug.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deploy.bundle import BundleError, load_bundle, shipped_bundles
from deploy.controller import GymController
from deploy.extras import missing_train_module, needs_train_extra
from deploy.files import atomic_write_bytes
from deploy.recurrent import RecurrentPolicy
from deploy.runtime import AdaptivePolicy

#: The runtime of either kind of bundle: gradient steps or memory (RL2).
Policy = AdaptivePolicy | RecurrentPolicy

#: The flags of the gradient step (``SafetyConfig`` fields); a memory bundle takes none.
_STEP_FLAGS = {"max_kl": "--max-kl", "max_update_norm": "--max-update-norm",
               "trial_episodes": "--trial-episodes", "worse_margin": "--worse-margin"}


class UsageError(Exception):
    """A failure the user caused: printed as one line, exit status 2."""


def _number_parser(cast: Callable[[str], float], accepts: Callable[[float], bool],
                   what: str) -> Callable[[str], Any]:
    """An argparse ``type`` that casts with ``cast`` and refuses values ``accepts`` rejects
    (and NaN or inf), with the message "must be {what}"."""
    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and accepts(value)):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    return parse


_positive_int = _number_parser(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _number_parser(int, lambda v: v >= 0, "an integer >= 0")
_non_negative_float = _number_parser(float, lambda v: v >= 0, "a finite number >= 0")
_seed = _number_parser(int, lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)")
_positive_float = _number_parser(float, lambda v: v > 0, "a finite number > 0")


def _one_line(err: BaseException) -> str:
    """An exception's message on one line (ORT and gymnasium messages span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metarobot-deploy",
        description="Run and adapt an exported metarobot bundle (numpy + onnxruntime).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    adapt = sub.add_parser(
        "adapt", help="adapt the bundle on simulator tasks; print return/success per task",
        description="For each task: E episodes with the meta-learned policy, K inner steps "
                    "on them, E episodes with the adapted policy. A memory (RL2) bundle "
                    "instead starts each task with an empty hidden state and runs E "
                    "episodes, then K more blocks of E with the state carried; 'after' is "
                    "the last block (the memory of K x E episodes). Prints a table of mean "
                    "return and success rate before and after adaptation.")
    shipped = ", ".join(shipped_bundles()) or "none installed"
    adapt.add_argument("--bundle", type=Path, required=True,
                       help=f"bundle directory, or the name of a shipped bundle ({shipped})")
    adapt.add_argument("--env", default=None,
                       help="gymnasium env id (default: the bundle's env_id)")
    adapt.add_argument("--split", default="test", choices=("train", "test"),
                       help="task split to sample from (default: test, held-out tasks)")
    adapt.add_argument("--tasks", type=_positive_int, default=5, help="number of tasks N")
    adapt.add_argument("--episodes", type=_positive_int, default=10,
                       help="episodes E before and after adaptation, per task (and per "
                            "step of a memory bundle)")
    adapt.add_argument("--adapt-steps", type=_positive_int, default=1,
                       help="adaptation steps K: inner gradient steps, or for a memory "
                            "(RL2) bundle blocks of E episodes carrying the hidden state")
    adapt.add_argument("--seed", type=_seed, default=0,
                       help="seed of task sampling, env resets and action noise")
    adapt.add_argument("--json", type=Path, default=None, metavar="PATH",
                       help="also write the results (per task and episode, their means, "
                            "the arguments and the bundle's parameter hash) to this JSON "
                            "file")
    adapt.add_argument("--max-kl", type=_positive_float, default=None,
                       help="gradient bundles: trust region: halve the step until its KL "
                            "is at most this "
                            "(nats; default: the bundle's rule, set at export from the KL "
                            "seen in training)")
    adapt.add_argument("--max-update-norm", type=_positive_float, default=None,
                       help="gradient bundles: scale down updates with a larger L2 norm "
                            "(default: the bundle's rule, else 10)")
    adapt.add_argument("--trial-episodes", type=_non_negative_int, default=None,
                       help="gradient bundles: episodes an adapted update is on trial "
                            "before it is kept or "
                            "rolled back (0: no trial; default: the bundle's rule)")
    adapt.add_argument("--worse-margin", type=_non_negative_float, default=None,
                       help="gradient bundles: roll back an update whose trial mean return "
                            "is below the "
                            "before mean by more than this many standard errors (default: "
                            "the bundle's rule)")
    return parser


def run_episodes(controller: GymController, policy: Policy,
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


def make_env(env_id: str, env_kwargs: dict[str, Any], policy: Policy) -> Any:
    """The simulator env ``env_id`` built with the bundle's env options, checked to fit
    the bundle (family, observation and action shapes, task sampling).

    Raises:
        UsageError: the simulator not installed (the train extra), an unknown id, options
            the env refuses, or an env that does not fit.
    """
    try:
        import gymnasium

        import sim_envs  # noqa: F401  (registers the sim_envs/* ids)
    except ModuleNotFoundError as err:
        missing = missing_train_module(err)
        if missing is None:
            raise  # not a module of the extra: a broken install or a bug
        raise UsageError(f"the simulator (sim_envs) {needs_train_extra(missing)}") from err
    try:
        env = gymnasium.make(env_id, **env_kwargs)
    except gymnasium.error.Error as err:  # unknown id, namespace or version
        raise UsageError(f"cannot make env {env_id!r}: {_one_line(err)}") from err
    except TypeError as err:  # options the env's constructor does not take
        raise UsageError(f"env {env_id!r} refuses the bundle's env options "
                         f"{env_kwargs}: {_one_line(err)}") from err
    family = getattr(getattr(env.unwrapped, "family", None), "name", None)
    problem = None
    if not hasattr(env.unwrapped, "sample_tasks"):
        problem = "is not a metarobot task family (no sample_tasks)"
    elif family is not None and family != policy.bundle.family:
        problem = f"simulates family {family!r}, the bundle is for {policy.bundle.family!r}"
    elif env.observation_space.shape != (policy.obs_dim,):
        problem = (f"observations are {env.observation_space.shape}, the bundle expects "
                   f"({policy.obs_dim},)")
    elif getattr(env.action_space, "shape", None) != (policy.act_dim,):
        problem = (f"actions are {getattr(env.action_space, 'shape', None)}, the bundle "
                   f"expects ({policy.act_dim},)")
    if problem is not None:
        env.close()
        raise UsageError(f"{env_id} {problem}")
    return env


def load_policy(args: argparse.Namespace) -> Policy:
    """The runtime of ``--bundle``'s kind: :class:`AdaptivePolicy` with the bundle's safety
    rules overridden by the step flags given, or :class:`RecurrentPolicy` (no flags).

    Raises:
        UsageError: a bad bundle, or step flags given with a memory bundle.
    """
    given = {k: getattr(args, k) for k in _STEP_FLAGS if getattr(args, k) is not None}
    try:
        bundle = load_bundle(args.bundle, check_models=False)
        if bundle.adaptation == "memory":
            if given:
                raise UsageError(f"{', '.join(_STEP_FLAGS[k] for k in given)}: only for "
                                 f"gradient steps; {bundle.path} adapts by memory (RL2) and "
                                 "takes none")
            return RecurrentPolicy(bundle, seed=args.seed)
        policy = AdaptivePolicy(bundle, seed=args.seed)
    except BundleError as err:
        raise UsageError(_one_line(err)) from err
    # The bundle's recorded rules (e.g. max_kl from training), overridden by flags given.
    policy.safety = dataclasses.replace(policy.safety, **given)
    return policy


def adapt_task(controller: GymController, policy: Policy, episodes: int, steps: int,
               ) -> tuple[tuple[list[float], list[bool]], tuple[list[float], list[bool]], str]:
    """One task, its adaptation already reset: ``(before, after, status)``, where before
    and after are :func:`run_episodes`' returns and successes and status describes the
    adaptation (see the module docstring for either kind)."""
    before = run_episodes(controller, policy, episodes)
    if isinstance(policy, RecurrentPolicy):
        resets = policy.state_resets
        after = before
        for _ in range(steps):  # step k: the state has carried k x E episodes
            after = run_episodes(controller, policy, episodes)
        status = f"memory of {steps * episodes} episode(s)"
        if policy.state_resets > resets:
            status += (f", {policy.state_resets - resets} state reset(s): "
                       f"{policy.last_reset_reason}")
        return before, after, status
    report = policy.adapt(steps)
    after = run_episodes(controller, policy, episodes)
    status = (f"accepted, kl {report.kl:.3g}" if report.accepted
              else f"rejected: {report.reason}")
    trial = policy.trial_report
    if report.accepted and trial is not None and trial.state != "on_trial":
        status += f", {trial.state.replace('_', ' ')}"
    return before, after, status


def cmd_adapt(args: argparse.Namespace) -> int:
    policy = load_policy(args)
    env_id = args.env or policy.bundle.env_id
    env = make_env(env_id, policy.bundle.env_kwargs, policy)
    try:
        tasks = env.unwrapped.sample_tasks(args.tasks, split=args.split, seed=args.seed)
    except ValueError as err:  # e.g. more tasks than a finite split holds
        env.close()
        raise UsageError(f"cannot sample {args.tasks} {args.split} tasks of {env_id}: "
                         f"{_one_line(err)}") from err
    header = (f"{'task':<28} {'return before':>13} {'return after':>12} {'success before':>14} "
              f"{'success after':>13}  adaptation")
    steps = (f"{args.adapt_steps} step(s) of memory (RL2: {args.episodes} episodes each)"
             if isinstance(policy, RecurrentPolicy) else f"{args.adapt_steps} inner step(s)")
    print(f"bundle {policy.bundle.path} ({policy.bundle.family}), env {env_id}, "
          f"split {args.split}, {args.episodes} episodes before/after, {steps}")
    print(header)
    print("-" * len(header))
    rows: list[tuple[float, float, float, float]] = []
    records: list[dict[str, Any]] = []
    with policy:
        for i, task in enumerate(tasks):
            policy.reset_adaptation()  # a memory bundle: a fresh hidden state
            env.unwrapped.set_task(task)
            controller = GymController(env, seed=args.seed * 100_003 + i)
            (pre_ret, pre_succ), (post_ret, post_succ), status = adapt_task(
                controller, policy, args.episodes, args.adapt_steps)
            row = (np.mean(pre_ret), np.mean(post_ret), np.mean(pre_succ), np.mean(post_succ))
            rows.append(row)
            records.append({"task_id": task.task_id, "adaptation": status,
                            "returns_before": pre_ret, "returns_after": post_ret,
                            "successes_before": pre_succ, "successes_after": post_succ})
            print(f"{task.task_id:<28} {row[0]:>13.2f} {row[1]:>12.2f} {row[2]:>14.2f} "
                  f"{row[3]:>13.2f}  {status}")
    mean = np.mean(rows, axis=0)
    print("-" * len(header))
    print(f"{'mean':<28} {mean[0]:>13.2f} {mean[1]:>12.2f} {mean[2]:>14.2f} {mean[3]:>13.2f}")
    env.close()
    if args.json is not None:
        write_results(args, policy, env_id, records, mean)
    return 0


def write_results(args: argparse.Namespace, policy: Policy, env_id: str,
                  records: list[dict[str, Any]], mean: np.ndarray) -> None:
    """Write ``--json``: the arguments, the bundle (path, family, parameter hash), each
    task's episodes and status, and the means over tasks (return and success rate before
    and after).

    Raises:
        UsageError: the file cannot be written.
    """
    results = {
        "command": "metarobot-deploy " + shlex.join(args.argv),
        "bundle": str(policy.bundle.path), "family": policy.bundle.family,
        "params_sha256": policy.bundle.spec.params.sha256,
        "adaptation": policy.bundle.adaptation, "env_id": env_id, "split": args.split,
        "seed": args.seed, "episodes": args.episodes, "adapt_steps": args.adapt_steps,
        "safety": ({k: v if math.isfinite(v) else str(v)  # e.g. max_kl "inf"
                    for k, v in dataclasses.asdict(policy.safety).items()}
                   if isinstance(policy, AdaptivePolicy) else None),
        "tasks": records,
        "mean": dict(zip(("return_before", "return_after", "success_before",
                          "success_after"), (float(m) for m in mean))),
    }
    text = json.dumps(results, indent=1, default=float)
    try:
        atomic_write_bytes(args.json, lambda f: f.write(text.encode()))
    except OSError as err:
        raise UsageError(f"cannot write --json {args.json}: {_one_line(err)}") from err
    print(f"results: {args.json}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``metarobot-deploy``; returns the process exit status (2: a
    failure the user caused, printed as one line)."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded by --json
    try:
        if args.command == "adapt":
            return cmd_adapt(args)
    except UsageError as err:
        print(f"metarobot-deploy {args.command}: error: {err}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args.command}")  # argparse restricts choices


if __name__ == "__main__":
    sys.exit(main())
