"""PyBullet task families for meta-reinforcement learning, as gymnasium environments.

Importing ``sim_envs`` registers the ids ``sim_envs/Reach-v0``, ``sim_envs/Grasp-v0``,
``sim_envs/Locomotion-v0`` and ``sim_envs/Walk-v0`` with gymnasium::

    import gymnasium as gym
    import sim_envs

    env = gym.make("sim_envs/Grasp-v0")
    task = env.unwrapped.sample_tasks(1, split="test", seed=0)[0]
    env.unwrapped.set_task(task)
    obs, info = env.reset(seed=0)
"""

from sim_envs.registry import ENV_IDS, FAMILY_NAMES, env_id, make_family, register_envs
from sim_envs.tasks import ParamSpec, Split, Task, TaskFamily, TaskParams

register_envs()

__all__ = ["ENV_IDS", "FAMILY_NAMES", "ParamSpec", "Split", "Task", "TaskFamily", "TaskParams",
           "env_id", "make_family", "register_envs"]
