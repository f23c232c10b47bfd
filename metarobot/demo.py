"""A task-family demo: random-action episodes on sampled tasks, recorded with RecordVideo."""

from __future__ import annotations

from pathlib import Path

import gymnasium
from gymnasium.wrappers import RecordVideo

from sim_envs.registry import env_id, make_family
from sim_envs.tasks import Split


def run_demo(family: str, split: Split = "train", episodes: int = 2, seed: int = 0,
             video_dir: str | Path = "videos") -> list[Path]:
    """Run ``episodes`` episodes, one sampled task each, and return the video files."""
    video_dir = Path(video_dir)
    tasks = make_family(family).sample_tasks(episodes, split, seed=seed)
    env = RecordVideo(gymnasium.make(env_id(family), render_mode="rgb_array"), str(video_dir),
                      episode_trigger=lambda _: True, name_prefix=family, disable_logger=True)
    env.action_space.seed(seed)
    try:
        for i, task in enumerate(tasks):
            env.unwrapped.set_task(task)
            env.reset(seed=seed + i)
            done = False
            while not done:
                _, _, terminated, truncated, _ = env.step(env.action_space.sample())
                done = terminated or truncated
    finally:
        env.close()
    return sorted(video_dir.glob(f"{family}-episode-*.mp4"))
