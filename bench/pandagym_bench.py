"""panda-gym throughput probe, run by ``bench/bench_envs.py`` inside a separate venv.

panda-gym's dependency pins may clash with ours, so it lives in its own venv::

    python -m venv /tmp/pandagym-venv
    /tmp/pandagym-venv/bin/pip install panda-gym==3.0.7

Protocol (same as ``bench_envs.py --worker``): build the env, print ``ready``, wait for
one line on stdin, step with uniform random actions for ``--duration`` seconds (resetting
at episode ends) and print one JSON line with the steps, wall and CPU seconds and the
control period. With ``--no-wait`` it starts at once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import gymnasium as gym
import numpy as np
import panda_gym  # noqa: F401  (registers the Panda ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="PandaPickAndPlace-v3")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of stepping")
    parser.add_argument("--warmup", type=int, default=200, help="untimed steps first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-wait", action="store_true", help="do not wait for stdin")
    args = parser.parse_args()

    env = gym.make(args.env)
    env.reset(seed=args.seed)
    actions = np.random.default_rng(args.seed).uniform(
        env.action_space.low, env.action_space.high,
        size=(4096, *env.action_space.shape)).astype(env.action_space.dtype)
    for i in range(args.warmup):
        _, _, terminated, truncated, _ = env.step(actions[i % len(actions)])
        if terminated or truncated:
            env.reset()
    sim = env.unwrapped.sim
    if not args.no_wait:
        print("ready", flush=True)
        sys.stdin.readline()
    steps = 0
    cpu_start = time.process_time()
    start = time.perf_counter()
    deadline = start + args.duration
    while True:
        for _ in range(50):  # check the clock every 50 steps
            _, _, terminated, truncated, _ = env.step(actions[steps % len(actions)])
            steps += 1
            if terminated or truncated:
                env.reset()
        now = time.perf_counter()
        if now >= deadline:
            break
    print(json.dumps({"env": args.env, "steps": steps, "seconds": now - start,
                      "cpu_seconds": time.process_time() - cpu_start,
                      "control_dt": sim.timestep * sim.n_substeps,
                      "substeps": sim.n_substeps, "physics_dt": sim.timestep}), flush=True)
    env.close()


if __name__ == "__main__":
    main()
