"""The device runtime without the training extra: load a shipped bundle, record episodes
from a numpy stand-in robot through the control loop, adapt on them.

Run as a script, it is the packaging check of ``.ci/run`` (a venv with only
``pip install .``, torch absent) and of tests/test_packaging.py (the dev venv). It
fails (exit 1, a message on stderr) if the adaptation is not accepted or does not
change the parameters, or if any module of the ``train`` extra was imported by the
runtime, even one that happens to be installed::

    python tests/runtime_only.py [--bundle reach]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import deploy
import deploy.advantages
import deploy.bundle
import deploy.cli
import deploy.controller
import deploy.runtime
from deploy import AdaptivePolicy, run_control_loop
from deploy.extras import TRAIN_EXTRA_MODULES

EPISODE_STEPS = 20
EPISODES = 8


class StandInRobot:
    """A numpy robot for :class:`deploy.RobotController`: observations drawn at random,
    reward the negative distance of the action to a fixed target action, episodes of
    ``EPISODE_STEPS`` steps."""

    def __init__(self, obs_dim: int, act_dim: int, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._obs_dim = obs_dim
        self._target = np.linspace(-0.5, 0.5, act_dim, dtype=np.float32)
        self._step = 0
        self._reward = 0.0

    def start_episode(self) -> None:
        self._step = 0

    def read_observation(self) -> np.ndarray:
        return self._rng.normal(0.0, 0.5, self._obs_dim).astype(np.float32)

    def apply_action(self, action: np.ndarray) -> None:
        self._reward = -float(np.linalg.norm(action - self._target))
        self._step += 1

    def read_reward(self) -> float:
        return self._reward

    def episode_status(self) -> tuple[bool, bool]:
        return False, self._step >= EPISODE_STEPS


def check(bundle: str) -> str:
    """Record :data:`EPISODES` episodes with the bundle's policy on :class:`StandInRobot`,
    adapt one step; returns a one-line summary.

    Raises:
        AssertionError: the adaptation was rejected or left the parameters unchanged, or
            a module of the train extra was imported.
    """
    policy = AdaptivePolicy.load(bundle, seed=0)
    with policy:
        robot = StandInRobot(policy.obs_dim, policy.act_dim, seed=0)
        # No sleeping: the schedule does not matter for recorded data.
        run_control_loop(robot, policy, rate_hz=1e6, steps=EPISODES * EPISODE_STEPS,
                         sleep=lambda _: None)
        recorded = policy.recorded_episodes()
        assert len(recorded) == EPISODES, f"recorded {len(recorded)} episodes, not {EPISODES}"
        report = policy.adapt(steps=1)
        assert report.accepted and report.applied, f"adaptation rejected: {report.reason}"
        moved = float(np.linalg.norm(policy.params - policy.bundle.params))
        assert np.isfinite(policy.params).all() and moved > 0, "parameters did not change"
    imported = sorted(name for name in TRAIN_EXTRA_MODULES if name in sys.modules)
    assert not imported, f"the runtime imported modules of the train extra: {imported}"
    return (f"runtime-only check ok: bundle {policy.bundle.path.name} "
            f"({policy.bundle.family}), {EPISODES} episodes of {EPISODE_STEPS} steps "
            f"recorded, adapted with kl {report.kl:.3g}, update norm {moved:.3g}; "
            f"deploy from {deploy.__file__}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="reach", help="bundle directory or shipped name")
    args = parser.parse_args()
    try:
        print(check(args.bundle))
    except AssertionError as err:
        print(f"runtime-only check failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
