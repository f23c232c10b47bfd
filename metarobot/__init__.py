"""metarobot: meta-reinforcement learning (PPO-MAML) for robots."""

__version__ = "0.1.0"
