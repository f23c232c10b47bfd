"""Family and environment registry: names, classes and gymnasium ids."""

from __future__ import annotations

import importlib

from sim_envs.tasks import TaskFamily

#: family name -> (module, family class, env class, gymnasium id, max episode steps)
_FAMILIES: dict[str, tuple[str, str, str, str, int]] = {
    "reach": ("sim_envs.reach", "ReachFamily", "ReachEnv", "sim_envs/Reach-v0", 50),
    "grasp": ("sim_envs.grasp", "GraspFamily", "GraspEnv", "sim_envs/Grasp-v0", 100),
    "locomotion": ("sim_envs.locomotion", "LocomotionFamily", "LocomotionEnv",
                   "sim_envs/Locomotion-v0", 200),
    "walk": ("sim_envs.walk", "WalkFamily", "WalkEnv", "sim_envs/Walk-v0", 200),
}

FAMILY_NAMES: tuple[str, ...] = tuple(_FAMILIES)
ENV_IDS: dict[str, str] = {name: entry[3] for name, entry in _FAMILIES.items()}


def make_family(name: str) -> TaskFamily:
    """The task family called ``name`` (one of :data:`FAMILY_NAMES`)."""
    if name not in _FAMILIES:
        raise ValueError(f"unknown task family {name!r}; known: {list(FAMILY_NAMES)}")
    module, family_cls, _, _, _ = _FAMILIES[name]
    return getattr(importlib.import_module(module), family_cls)()


def env_id(name: str) -> str:
    """The gymnasium id of family ``name``'s environment."""
    if name not in _FAMILIES:
        raise ValueError(f"unknown task family {name!r}; known: {list(FAMILY_NAMES)}")
    return ENV_IDS[name]


def register_envs() -> None:
    """Register every family's env with gymnasium (idempotent)."""
    import gymnasium

    for module, _, env_cls, gym_id, max_steps in _FAMILIES.values():
        if gym_id not in gymnasium.registry:
            gymnasium.register(id=gym_id, entry_point=f"{module}:{env_cls}",
                               max_episode_steps=max_steps)
