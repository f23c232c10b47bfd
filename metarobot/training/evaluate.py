"""Evaluate a meta-trained policy: return and success before and after each adaptation step."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarobot.core.policy import GaussianMLPPolicy, Params
from metarobot.core.recurrent import GaussianGRUPolicy, make_policy
from metarobot.sampling.rollouts import collect_adaptation_rollouts
from metarobot.training.checkpoint import load_run
from metarobot.training.config import TrainConfig, config_from_dict
from sim_envs.registry import env_id, make_family
from sim_envs.tasks import Split

# Two-sided 95% Student-t critical values for 1..30 degrees of freedom (normal beyond).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_ci95(values: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of its 95% confidence interval (Student t over the values)."""
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    if n < 2:
        return float(values.mean()) if n else math.nan, math.nan
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    return float(values.mean()), float(t * values.std(ddof=1) / math.sqrt(n))


@dataclass
class TrainedPolicy:
    """A policy restored from a run: module (with normaliser), parameters and config."""

    model: GaussianMLPPolicy | GaussianGRUPolicy
    params: Params
    meta_sgd_lr: Params | None
    config: TrainConfig
    iteration: int
    #: Env steps of meta-training up to this checkpoint.
    env_steps: int = 0
    #: Largest adaptation KL of each of the last training iterations (nats).
    recent_adaptation_kl: list[float] = field(default_factory=list)


def load_trained_policy(run_dir: str | Path, device: str = "cpu") -> TrainedPolicy:
    """Restore the policy of ``run_dir``'s last checkpoint (``ValueError`` if unusable)."""
    state = load_run(run_dir)
    config = config_from_dict(state.config)
    model = make_policy(config.policy.kind, state.model.obs_dim, state.model.act_dim,
                        config.policy.hidden, config.policy.init_log_std,
                        config.policy.context_dim, config.policy.dynamics_hidden,
                        config.policy.context_noise, config.policy.rotate_context).to(device)
    norm = state.normalizer
    model.set_normalizer(norm["mean"].float().to(device), norm["var"].float().to(device))
    reward_norm = state.algo_state.reward_normalizer
    if reward_norm is not None:
        assert isinstance(model, GaussianGRUPolicy)
        model.set_reward_normalizer(reward_norm["mean"].float().to(device),
                                    reward_norm["var"].float().to(device))
    params = {k: v.to(device) for k, v in state.model.params.items()}
    expected = {k: tuple(v.shape) for k, v in model.named_parameters()}
    if {k: tuple(v.shape) for k, v in params.items()} != expected:
        raise ValueError(f"checkpoint parameters do not fit the configured policy {expected}")
    lr = state.algo_state.meta_sgd_lr
    lr = None if lr is None else {k: v.to(device) for k, v in lr.items()}
    return TrainedPolicy(model, params, lr, config, state.iteration,
                         state.algo_state.env_steps, list(state.algo_state.recent_adaptation_kl))


@dataclass
class EvaluationResult:
    """Per-task returns and success rates before (step 0) and after each adaptation step.

    Attributes:
        returns: ``[K+1, M]`` mean episode return of each task after k adaptation steps.
        success: ``[K+1, M]`` success rate of each task after k steps.
    """

    family: str
    split: str
    episodes: int
    task_ids: list[str]
    returns: np.ndarray
    success: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> list[dict[str, float]]:
        rows = []
        for k in range(self.returns.shape[0]):
            r_mean, r_ci = mean_ci95(self.returns[k])
            s_mean, s_ci = mean_ci95(self.success[k])
            rows.append({"adapt_steps": k, "return_mean": r_mean, "return_ci95": r_ci,
                         "success_mean": s_mean, "success_ci95": s_ci})
        return rows

    def table(self) -> str:
        lines = [f"{self.family} / {self.split}: {len(self.task_ids)} tasks x "
                 f"{self.episodes} episodes (mean ± 95% CI over tasks)",
                 f"{'steps':>5} | {'return':>20} | {'success':>16}", "-" * 48]
        for row in self.summary():
            lines.append(f"{row['adapt_steps']:>5} | {row['return_mean']:>10.3f} ± "
                         f"{row['return_ci95']:<7.3f} | {row['success_mean']:>7.3f} ± "
                         f"{row['success_ci95']:<6.3f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "split": self.split, "episodes": self.episodes,
                "task_ids": self.task_ids, "returns": self.returns.tolist(),
                "success": self.success.tolist(), "summary": self.summary(), **self.meta}

    def save(self, out_dir: str | Path, stem: str = "evaluation") -> tuple[Path, Path]:
        """Write ``<stem>.json`` and ``<stem>.png`` (return and success vs adaptation step)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        json_path, png_path = out_dir / f"{stem}.json", out_dir / f"{stem}.png"
        json_path.write_text(json.dumps(self.to_dict(), indent=2))
        rows = self.summary()
        steps = [r["adapt_steps"] for r in rows]
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
        for ax, key, label in ((axes[0], "return", "return"), (axes[1], "success", "success")):
            ax.errorbar(steps, [r[f"{key}_mean"] for r in rows],
                        yerr=[r[f"{key}_ci95"] for r in rows], marker="o", capsize=4)
            ax.set_xlabel("adaptation steps")
            ax.set_ylabel(f"{label} (mean, 95% CI)")
            ax.set_xticks(steps)
            ax.grid(alpha=0.3)
        fig.suptitle(f"{self.family}: {self.split} tasks")
        fig.tight_layout()
        fig.savefig(png_path, dpi=120)
        plt.close(fig)
        return json_path, png_path


def _check_counts(**counts: tuple[int | None, int]) -> None:
    """Raise ``ValueError`` unless each ``name=(value, minimum)`` is None or an int
    >= minimum."""
    for name, (value, minimum) in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < minimum):
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def evaluate_policy(policy: TrainedPolicy, split: Split = "test", adapt_steps: int = 3,
                    num_tasks: int = 20, episodes: int | None = None, seed: int = 0,
                    num_workers: int | None = None) -> EvaluationResult:
    """Adapt ``policy`` on ``num_tasks`` tasks of ``split`` for ``adapt_steps`` steps.

    Each step samples ``episodes`` episodes per task (default: the training meta-batch's),
    refits the baseline and takes the trainer's inner step on them.

    RL2 (``outer.algo: rl2``) adapts by memory: each task runs one trial of
    ``(adapt_steps + 1) * episodes`` episodes with the hidden state carried across all of
    them, and "after k steps" is the mean over episodes ``k * E .. (k + 1) * E - 1``: the
    policy has carried its state through ``k * E`` episodes of the task, as many as the
    gradient methods had adapted on, so the columns compare.
    """
    from metarobot.sampling.sampler import MultiTaskSampler

    _check_counts(adapt_steps=(adapt_steps, 0), num_tasks=(num_tasks, 1),
                  episodes=(episodes, 1))
    cfg = policy.config
    episodes = cfg.meta_batch.episodes if episodes is None else episodes
    tasks = make_family(cfg.family).sample_tasks(num_tasks, split, seed=seed)
    device = next(iter(policy.params.values())).device
    workers = cfg.sampler.num_workers if num_workers is None else num_workers
    generator = torch.Generator().manual_seed(seed)  # CPU: same noise on any device
    with MultiTaskSampler(env_id(cfg.family), workers, cfg.sampler.envs_per_worker,
                          device=device, env_kwargs=cfg.env_kwargs) as sampler:
        if isinstance(policy.model, GaussianGRUPolicy):
            params = {k: v.expand(len(tasks), *v.shape) for k, v in policy.params.items()}
            trial = sampler.sample_trials(policy.model, params, tasks,
                                          (adapt_steps + 1) * episodes, seed=10_000 + seed,
                                          generator=generator)
            shape = (len(tasks), adapt_steps + 1, episodes)  # [M, K+1, E]
            returns = trial.episode_returns.reshape(shape).mean(2).T.cpu().numpy()
            success = trial.success.reshape(shape).mean(2).T.cpu().numpy()
        else:
            rollouts = collect_adaptation_rollouts(
                sampler, policy.model, policy.params, tasks, episodes, adapt_steps, cfg.inner,
                cfg.advantages, policy.meta_sgd_lr, seed=10_000 + seed, generator=generator)
            returns = np.stack([b.episode_returns.mean(1).cpu().numpy()
                                for b in rollouts.batches])
            success = np.stack([b.success.mean(1).cpu().numpy() for b in rollouts.batches])
    return EvaluationResult(cfg.family, split, episodes, [t.task_id for t in tasks], returns,
                            success, meta={"seed": seed, "iteration": policy.iteration})
