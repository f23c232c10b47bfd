"""A two-armed toy task family for RL2 tests (a plain module: pytest puts ``tests/`` on
the path, and the sampler's workers import it through the ``module:Id`` env id).

Each task hides a side ``s`` in {-1, +1}. An episode is one step: the observation is
always 0, the action ``a`` (clipped to [-1, 1]) earns ``s * a``. Nothing but the reward
reveals the side, so no policy can do better than 0 on average in a trial's first
episode; a policy that remembers the first episode's action and reward can earn up to 1
in the second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from sim_envs.base_env import MetaEnv
from sim_envs.tasks import ParamSpec, Split, Task, TaskFamily, TaskParams, param


@dataclass(frozen=True)
class TwoArmParams(TaskParams):
    side: int = param(ParamSpec(choices=(-1, 1), doc="the rewarded sign of the action"))


class TwoArmFamily(TaskFamily):
    name = "twoarm"
    params_type = TwoArmParams

    def _sample_params(self, rng: np.random.Generator, split: Split) -> TaskParams:
        return TwoArmParams(side=int(rng.choice([-1, 1])))

    def split_of(self, params: TaskParams) -> Split:
        return "train"


class TwoArmEnv(MetaEnv):
    family_type = TwoArmFamily

    def _build_scene(self) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    def _apply_task(self, task: Task) -> None:
        self.side = task.params.side

    def _reset_episode(self) -> None:
        pass

    def _observe(self) -> np.ndarray:
        return np.zeros(1, np.float32)

    def _step(self, action: np.ndarray) -> tuple[float, bool, bool, dict[str, Any]]:
        reward = self.side * float(np.clip(action[0], -1.0, 1.0))
        return reward, False, reward > 0.5, {}


if "TwoArm-v0" not in gymnasium.registry:
    gymnasium.register(id="TwoArm-v0", entry_point=f"{__name__}:TwoArmEnv", max_episode_steps=1)
TWOARM_ID = f"{__name__}:TwoArm-v0"


def balanced_tasks(n: int) -> list[Task]:
    """``n`` tasks, sides alternating +1, -1 (n even: exactly balanced)."""
    family = TwoArmFamily()
    return [family.make_task({"side": 1 if i % 2 == 0 else -1}) for i in range(n)]
