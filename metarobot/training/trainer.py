"""The meta-trainer: iterations, checkpoints, logging, resume.

One iteration (:meth:`MetaTrainer.run_iteration`), top to bottom:

1. sample M training tasks (seeded by the run seed and the iteration);
2. collect K pre-update batches, adapting after each (ProMP: step k's data comes from the
   k-times adapted policy), then one post-update batch with the adapted parameters; with
   ``advantages.baseline: mlp`` the post-update advantages come from the learned value
   function (:mod:`metarobot.algos.value`), which then trains on that batch;
3. the outer update of ``outer.algo``: :func:`metarobot.algos.promp.update` (``outer.epochs``
   Adam steps on PPO-clip(post-update data) + eta * KL, then the adaptive eta),
   :func:`metarobot.algos.reptile.update`, or :func:`metarobot.algos.es.update` (ES-MAML:
   step 2 ran each task with two antithetic perturbations of theta). ``outer.algo: rl2``
   replaces steps 2-3 (:meth:`MetaTrainer._rl2_iteration`): one trial of E episodes per
   task with the GRU policy's memory, then :func:`metarobot.algos.rl2.update`;
4. update the observation normaliser, log, checkpoint.

A non-finite loss or gradient skips the update (logged); ``max_nonfinite_updates`` in a
row stops training with :class:`TrainingDiverged`, leaving the last good checkpoint.

The run directory is protected: a new run refuses a directory that already holds one
(unless ``overwrite``, and then only a recognisable run is replaced), and everything the
config decides, the env's kwargs included, is checked before anything is written.
"""

from __future__ import annotations

import math
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium
import numpy as np
import torch

from metarobot.algos import es, maml, promp, reptile, rl2
from metarobot.algos.value import LearnedBaseline
from metarobot.core.batch import EpisodeBatch
from metarobot.core.inner import adapted_names, inner_loss, step_sizes
from metarobot.core.policy import GaussianMLPPolicy, Params, latent_kl
from metarobot.core.recurrent import GaussianGRUPolicy, make_policy
from metarobot.sampling.rollouts import AdaptationRollouts, collect_adaptation_rollouts
from metarobot.training.checkpoint import (
    CHECKPOINT_NAME,
    AlgoState,
    Checkpoint,
    ModelState,
    load_run,
    remove_orphan_temporaries,
    save_checkpoint,
    temporary_files,
)
from metarobot.training.config import TrainConfig, resume_config, save_config
from metarobot.training.curriculum import TerrainCurriculum
from metarobot.training.normalizer import RunningMeanStd
from metarobot.training.runlog import RunLogger
from sim_envs.registry import env_id, make_family
from sim_envs.tasks import Task

if TYPE_CHECKING:  # the sampler module is imported when the first sampler is made
    from metarobot.sampling.sampler import MultiTaskSampler

CONFIG_NAME = "config.yaml"
#: Files that make a directory a run (any one of them: a new run refuses to start there).
RUN_MARKERS = (CHECKPOINT_NAME, CONFIG_NAME, "log.jsonl")
#: Everything a run writes into its directory (trainer, ``evaluate``, ``quickstart``):
#: what ``overwrite`` removes. Other files in the directory are left alone.
RUN_ENTRIES = (*RUN_MARKERS, "tb", "episodes", "eval", "bundle", "report.md",
               "training_curve.png")
#: Files written atomically through a temporary file (``.NAME.*.tmp``).
ATOMIC_FILES = (CHECKPOINT_NAME, CONFIG_NAME)


class TrainingDiverged(RuntimeError):
    """Raised after too many consecutive non-finite updates."""


class TrainingStopped(RuntimeError):
    """Raised by :meth:`MetaTrainer.train` after a SIGINT/SIGTERM, once the checkpoint
    is saved. ``signum`` is the signal; the CLI exits with ``128 + signum``."""

    def __init__(self, signum: int, iteration: int, checkpoint: Path) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name} at iteration {iteration}; "
                         f"checkpoint saved at {checkpoint}; continue with "
                         f"metarobot train --resume {checkpoint.parent}")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
    return torch.device(name)


def env_spaces(family: str, env_kwargs: dict[str, Any],
               ) -> tuple[gymnasium.spaces.Box, gymnasium.spaces.Box]:
    """The observation and action spaces of a family's env, built once with
    ``env_kwargs``; kwargs the env does not accept raise ``ValueError`` naming
    ``env_kwargs``."""
    try:
        env = gymnasium.make(env_id(family), **env_kwargs)
    except Exception as err:  # the env's constructor may raise anything on bad kwargs
        reason = " ".join(str(err).split())
        raise ValueError(f"invalid config: env_kwargs = {env_kwargs!r} is not accepted by "
                         f"{env_id(family)}: {type(err).__name__}: {reason}") from err
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def run_entries(run_dir: Path) -> list[str]:
    """The names of :data:`RUN_ENTRIES` and of leftover temporary files in ``run_dir``."""
    present = [name for name in RUN_ENTRIES if (run_dir / name).exists()]
    return present + [p.name for name in ATOMIC_FILES for p in temporary_files(run_dir, name)]


def is_recognisable_run(run_dir: Path) -> bool:
    """True if ``run_dir`` holds a run this package wrote: a complete saved config (every
    top-level key, as :func:`save_config` writes it) or a loadable checkpoint."""
    import yaml

    try:
        saved = yaml.safe_load((run_dir / CONFIG_NAME).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        saved = None
    if isinstance(saved, dict) and set(saved) == set(TrainConfig().to_dict()):
        return True
    try:
        load_run(run_dir)
    except ValueError:
        return False
    return True


def check_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Raise ``ValueError`` if a new run may not start in ``run_dir``; writes nothing.

    A directory holding any run file is refused, unless ``overwrite`` and it is
    recognisably a run (:func:`is_recognisable_run`).
    """
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} exists and is not a directory")
    found = run_entries(run_dir)
    if not found:
        return
    if not overwrite:
        raise ValueError(f"run directory {run_dir} already holds a run ({', '.join(found)}); "
                         f"continue it with --resume {run_dir}, replace it with --overwrite "
                         "(Python: overwrite=True), or choose another --run-dir")
    if not is_recognisable_run(run_dir):
        raise ValueError(f"--overwrite refused: {run_dir} holds {', '.join(found)} but is not "
                         f"recognisably a metarobot run (no complete {CONFIG_NAME}, no "
                         f"loadable {CHECKPOINT_NAME}); remove those files yourself or choose "
                         "another --run-dir")


def clear_run_dir(run_dir: Path) -> list[str]:
    """Remove what a run wrote into ``run_dir`` (:func:`run_entries`); returns the names."""
    found = run_entries(run_dir)
    for name in found:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return found


def make_sampler(config: TrainConfig, device: torch.device) -> MultiTaskSampler:
    from metarobot.sampling.sampler import MultiTaskSampler

    return MultiTaskSampler(env_id(config.family), config.sampler.num_workers,
                            config.sampler.envs_per_worker, device=device,
                            env_kwargs=config.env_kwargs, backend=config.sampler.backend,
                            ray_address=config.sampler.ray_address or None)


class MetaTrainer:
    """Meta-trains a :class:`GaussianMLPPolicy` (or RL2's :class:`GaussianGRUPolicy`) on a
    task family.

    Args:
        config: a validated :class:`TrainConfig`.
        run_dir: where config, checkpoint, logs and episode records go.
        progress: show a progress bar.
        overwrite: replace the run already in ``run_dir`` (only a recognisable run;
            files that are not a run's are kept). Without it, a directory holding a run
            raises ``ValueError``.
        resuming: ``run_dir`` holds the run being continued (set by :meth:`resume`).

    Nothing is written until the config is validated and the env has been built once
    with ``config.env_kwargs``. Use :meth:`resume` to continue a run from its last
    checkpoint.
    """

    def __init__(self, config: TrainConfig, run_dir: str | Path, progress: bool = True, *,
                 overwrite: bool = False, resuming: bool = False) -> None:
        self.config = config.validate()
        if config.sampler.backend == "ray":
            from metarobot.sampling.ray_workers import import_ray

            import_ray()  # not installed: the error now, before the run directory is made
        self.run_dir = Path(run_dir)
        if not resuming:
            check_new_run_dir(self.run_dir, overwrite)
        self.progress = progress
        self.device = resolve_device(config.device)
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(config.seed)
        self.family = make_family(config.family)
        obs_space, act_space = env_spaces(config.family, config.env_kwargs)
        self.obs_dim, self.act_dim = int(obs_space.shape[0]), int(act_space.shape[0])
        self.model: GaussianMLPPolicy | GaussianGRUPolicy = make_policy(
            config.policy.kind, self.obs_dim, self.act_dim, config.policy.hidden,
            config.policy.init_log_std, config.policy.context_dim,
            config.policy.dynamics_hidden, config.policy.context_noise,
            config.policy.rotate_context).to(self.device)
        self.params: Params = self.model.init_params()  # leaves, on the model's device
        # Meta-SGD: one learned rate per adapted parameter (all, or the context alone).
        self.meta_sgd_lr: Params | None = (
            {k: torch.full_like(self.params[k], config.inner.lr).requires_grad_(True)
             for k in adapted_names(config.inner.adapt, self.params)}
            if config.inner.meta_sgd else None)
        trainable = list(self.params.values()) + list((self.meta_sgd_lr or {}).values())
        self.optimizer = torch.optim.Adam(trainable, lr=config.outer.lr)
        self.normalizer = RunningMeanStd(self.obs_dim)
        self.reward_normalizer = RunningMeanStd(1) if config.policy.reward_norm else None
        adv_cfg = config.advantages
        self.value_baseline: LearnedBaseline | None = (
            LearnedBaseline(self.obs_dim, adv_cfg.value_hidden, adv_cfg.value_lr,
                            adv_cfg.value_epochs, adv_cfg.value_minibatch, self.device,
                            task_dim=self.family.params_type.feature_size()
                            if adv_cfg.value_task_features else 0)
            if adv_cfg.baseline == "mlp" else None)
        # Action noise is drawn on the CPU whatever the training device, so a CUDA run
        # samples the same episodes as a CPU run with the same seed.
        self.generator = torch.Generator().manual_seed(config.seed)
        self.eta = config.outer.eta
        self.iteration = 0
        self.env_steps = 0
        self.nonfinite_in_a_row = 0
        self.recent_adaptation_kl: list[float] = []
        self.curriculum = (TerrainCurriculum(self.family, config.curriculum)
                           if config.curriculum.enabled else None)
        self._sampler: MultiTaskSampler | None = None
        self._stop_requested = False
        self._logger: RunLogger | None = None
        self._events_seen = 0
        self._stop_signal: int | None = None
        self._setup_notes = self._prepare_run_dir(overwrite and not resuming)
        save_config(config, self.run_dir / CONFIG_NAME)

    def _prepare_run_dir(self, overwrite: bool) -> list[str]:
        """Create the run directory, clear the old run (``overwrite``) and remove leftover
        temporary files; returns notes for the run's log."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(err.errno, f"cannot create the run directory ({err.strerror})",
                          str(self.run_dir)) from err
        notes = []
        if overwrite:
            removed = clear_run_dir(self.run_dir)
            if removed:
                notes.append(f"--overwrite: removed the previous run's {', '.join(removed)}")
        orphans = remove_orphan_temporaries(self.run_dir, ATOMIC_FILES)
        if orphans:
            notes.append("removed leftover temporary files of an interrupted write: "
                         + ", ".join(p.name for p in orphans))
        return notes

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    def checkpoint(self) -> Checkpoint:
        """The trainer's whole state (tensors copied to the CPU)."""
        return Checkpoint(
            iteration=self.iteration,
            config=self.config.to_dict(),
            model=ModelState({k: v.detach().cpu() for k, v in self.params.items()},
                             self.obs_dim, self.act_dim),
            optimizer=self.optimizer.state_dict(),
            normalizer=self.normalizer.state_dict(),
            rng={"torch": torch.get_rng_state(), "generator": self.generator.get_state(),
                 "numpy": np.random.get_state()},
            algo_state=AlgoState(
                eta=self.eta, env_steps=self.env_steps,
                recent_adaptation_kl=list(self.recent_adaptation_kl),
                meta_sgd_lr=None if self.meta_sgd_lr is None else
                {k: v.detach().cpu() for k, v in self.meta_sgd_lr.items()},
                value_baseline=None if self.value_baseline is None else
                self.value_baseline.state_dict(),
                curriculum_levels=None if self.curriculum is None else
                dict(self.curriculum.levels),
                reward_normalizer=None if self.reward_normalizer is None else
                self.reward_normalizer.state_dict()),
        )

    def state_dict(self) -> dict[str, Any]:
        """:meth:`checkpoint` as the dict saved on disk."""
        return self.checkpoint().to_dict()

    def save(self) -> Path:
        """Write the checkpoint atomically (only ever with finite parameters). A failed
        write (disk full, permissions) raises ``OSError`` and leaves the previous
        checkpoint as it was."""
        if not all(torch.isfinite(v).all() for v in self.params.values()):
            raise TrainingDiverged("refusing to checkpoint non-finite parameters")
        try:
            save_checkpoint(self.checkpoint_path, self.checkpoint())
        except OSError as err:
            previous = ("the previous checkpoint is intact" if self.checkpoint_path.exists()
                        else "there is no earlier checkpoint")
            raise OSError(err.errno, f"cannot write the checkpoint at iteration "
                          f"{self.iteration} ({err.strerror or err}); {previous}",
                          str(self.checkpoint_path)) from err
        return self.checkpoint_path

    def load_state_dict(self, state: Checkpoint | dict[str, Any]) -> None:
        """Restore a checkpoint (typed, or the dict on disk); ``ValueError`` if it does not
        fit this trainer's config (dims, parameters, Meta-SGD, value network)."""
        if not isinstance(state, Checkpoint):
            state = Checkpoint.from_dict(state)
        model, algo = state.model, state.algo_state
        if (model.obs_dim, model.act_dim) != (self.obs_dim, self.act_dim):
            raise ValueError(f"checkpoint is for obs/act dims {model.obs_dim}/"
                             f"{model.act_dim}, this config's env has "
                             f"{self.obs_dim}/{self.act_dim}")
        if set(model.params) != set(self.params) or any(
                model.params[k].shape != v.shape for k, v in self.params.items()):
            raise ValueError("checkpoint parameters do not match this config's policy")
        with torch.no_grad():
            for k, v in self.params.items():
                v.copy_(model.params[k])
            if self.meta_sgd_lr is not None:
                if algo.meta_sgd_lr is None:
                    raise ValueError("checkpoint has no Meta-SGD learning rates")
                for k, v in self.meta_sgd_lr.items():
                    v.copy_(algo.meta_sgd_lr[k])
        if self.value_baseline is not None:
            if algo.value_baseline is None:
                raise ValueError("checkpoint has no learned value baseline "
                                 "(it was trained with advantages.baseline: linear)")
            try:
                self.value_baseline.load_state_dict(algo.value_baseline)
            except RuntimeError as error:  # torch's size-mismatch message names no setting
                raise ValueError(
                    "checkpoint's value network does not match this config's "
                    "advantages.value_hidden / value_task_features (a run from before "
                    "value_task_features existed resumes with "
                    "--set advantages.value_task_features=false)") from error
        self.optimizer.load_state_dict(state.optimizer)
        self.normalizer.load_state_dict(state.normalizer)
        torch.set_rng_state(state.rng["torch"])
        self.generator.set_state(state.rng["generator"])
        np.random.set_state(state.rng["numpy"])
        self.eta = algo.eta
        self.env_steps = algo.env_steps
        self.recent_adaptation_kl = list(algo.recent_adaptation_kl)
        if self.curriculum is not None:
            if algo.curriculum_levels is None and state.iteration > 0:
                raise ValueError("checkpoint has no curriculum levels (it was trained "
                                 "with curriculum.enabled: false)")
            self.curriculum.levels = dict(algo.curriculum_levels or {})
        if self.reward_normalizer is not None:
            if algo.reward_normalizer is None and state.iteration > 0:
                raise ValueError("checkpoint has no reward normaliser (it was trained "
                                 "with policy.reward_norm: false)")
            if algo.reward_normalizer is not None:
                self.reward_normalizer.load_state_dict(algo.reward_normalizer)
        self.iteration = state.iteration

    @classmethod
    def resume(cls, run_dir: str | Path, progress: bool = True, iterations: int | None = None,
               overrides: list[str] | None = None) -> MetaTrainer:
        """Continue the run in ``run_dir`` from its last checkpoint.

        ``overrides`` (``key=value``) may change only
        :data:`~metarobot.training.config.RESUME_SAFE_KEYS`; any other key raises ``ValueError``.
        """
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise ValueError(f"no run to resume: {run_dir} is not a directory")
        state = load_run(run_dir)
        extra = [] if iterations is None else [f"iterations={iterations}"]
        config = resume_config(state.config, list(overrides or []) + extra)
        trainer = cls(config, run_dir, progress=progress, resuming=True)
        trainer.load_state_dict(state)
        return trainer

    # ------------------------------------------------------------------ training
    def _sampler_instance(self) -> MultiTaskSampler:
        if self._sampler is None:
            self._sampler = make_sampler(self.config, self.device)
        return self._sampler

    def run_iteration(self) -> dict[str, float]:
        """One meta-iteration (see the module docstring); returns the logged scalars."""
        cfg, it = self.config, self.iteration
        t_start = time.perf_counter()
        self.model.set_normalizer(self.normalizer.mean.float().to(self.device),
                                  self.normalizer.var.float().to(self.device))
        if self.reward_normalizer is not None:
            assert isinstance(self.model, GaussianGRUPolicy)
            self.model.set_reward_normalizer(self.reward_normalizer.mean.float().to(self.device),
                                             self.reward_normalizer.var.float().to(self.device))
        task_seed = cfg.seed * 1_000_003 + it
        tasks = (self.family.sample_balanced(cfg.meta_batch.tasks, "train", task_seed,
                                             by=cfg.meta_batch.balance)
                 if cfg.meta_batch.balance else
                 self.family.sample_tasks(cfg.meta_batch.tasks, "train", seed=task_seed))
        groups: list[str | None] = []
        if self.curriculum is not None:
            tasks, groups = self.curriculum.apply(tasks, seed=task_seed)
        if cfg.outer.algo == "rl2":
            return self._rl2_iteration(tasks, groups, t_start)
        old_params = {k: v.detach().clone() for k, v in self.params.items()}

        # 1-2. Pre-update data with theta (and the k-times adapted policies), post-update data.
        # ES-MAML samples every task twice, with theta + sigma * eps_i and theta - sigma * eps_i.
        sampling_params, eps = self.params, None
        if cfg.outer.algo == "es":
            eps, sampling_params = es.perturb(self.params, len(tasks), cfg.outer.es_sigma,
                                              self.generator)
            tasks = tasks + tasks
        rollouts = collect_adaptation_rollouts(
            self._sampler_instance(), self.model, sampling_params, tasks,
            cfg.meta_batch.episodes, cfg.inner.steps, cfg.inner, cfg.advantages,
            self.meta_sgd_lr, seed=cfg.seed * 1_000_003 + 7 * it, generator=self.generator,
            keep_graph=cfg.outer.algo == "ppo", stacked=eps is not None)
        post, post_adv = rollouts.batches[-1], rollouts.advs[-1]
        adaptation_kl = self._adaptation_kl(rollouts)
        t_sampled = time.perf_counter()
        if self.value_baseline is not None:
            post_adv, rollouts.explained_variance[-1] = self.value_baseline.advantages(
                post.obs, post.rew, post.mask, self.model.obs_mean, self.model.obs_var,
                cfg.advantages.gamma, cfg.advantages.lam, cfg.advantages.normalize,
                self._task_features(tasks))
        t_scored = time.perf_counter()

        # 3. Outer update.
        rates = step_sizes(cfg.inner.adapt, cfg.inner.lr, self.params, self.meta_sgd_lr)
        if cfg.outer.algo == "ppo":
            stats, self.eta = promp.update(self.model, self.params, old_params, rollouts,
                                           post_adv, rates, cfg.inner, cfg.outer, self.eta,
                                           self._apply_update)
        elif cfg.outer.algo == "reptile":
            stats = reptile.update(self.model, self.params, rollouts, rates, cfg.outer)
        else:
            assert eps is not None
            fitness = post.episode_returns.mean(1)  # [2N]: each perturbed theta's return
            stats = es.update(self.params, eps, fitness, cfg.outer.es_sigma, self._apply_update)
        t_done = time.perf_counter()

        # 4. Bookkeeping.
        self.normalizer.update(rollouts.batches[0].obs, rollouts.batches[0].mask)
        self.env_steps += int(sum(b.mask.sum().item() for b in rollouts.batches))
        self.iteration += 1
        scalars = self._iteration_scalars(rollouts, stats)
        if self.curriculum is not None:
            # The adapted policy's success per task (ES: both halves of each task).
            success = post.success.mean(1).reshape(-1, len(groups)).mean(0)
            self.curriculum.update(groups, success.cpu().numpy())
            scalars.update(self.curriculum.scalars())
        scalars["inner/adaptation_kl_mean"] = adaptation_kl.mean().item()
        scalars["inner/adaptation_kl_max"] = adaptation_kl.max().item()
        if cfg.inner.loss == "dynamics":
            scalars.update(self._dynamics_losses(rollouts, old_params))
        scalars.update({"time/sampling": t_sampled - t_start,
                        "time/value_baseline": t_scored - t_sampled,
                        "time/outer_update": t_done - t_scored,
                        "time/iteration": t_done - t_start, "outer/eta": self.eta,
                        "env_steps": float(self.env_steps)})
        self._save_episodes(it, tasks, rollouts.batches)
        return scalars

    def _rl2_iteration(self, tasks: list[Task], groups: list[str | None],
                       t_start: float) -> dict[str, float]:
        """One RL2 iteration: a trial of E episodes per task with the GRU's memory, then
        :func:`metarobot.algos.rl2.update` (PPO over the trials, truncated BPTT)."""
        cfg, it = self.config, self.iteration
        assert isinstance(self.model, GaussianGRUPolicy)
        params = {k: v.detach().expand(len(tasks), *v.shape) for k, v in self.params.items()}
        batch = self._sampler_instance().sample_trials(
            self.model, params, tasks, cfg.meta_batch.episodes,
            seed=cfg.seed * 1_000_003 + 7 * it, generator=self.generator)
        trials = rl2.pack_trials(batch)
        adv_cfg = cfg.advantages
        if self.value_baseline is None:
            adv, explained_variance = rl2.trial_advantages(
                trials, adv_cfg.gamma, adv_cfg.lam, adv_cfg.normalize)
        else:  # each trial as one long episode [M, 1, L] of the value network
            inputs = trials.inputs
            adv, explained_variance = self.value_baseline.advantages(
                inputs.obs[:, None], trials.rew[:, None], inputs.mask[:, None],
                self.model.obs_mean, self.model.obs_var, adv_cfg.gamma, adv_cfg.lam,
                adv_cfg.normalize, self._task_features(tasks))
            adv = adv[:, 0]
        t_sampled = time.perf_counter()
        stats = rl2.update(self.model, self.params, trials, adv, cfg.outer.epochs,
                           cfg.outer.clip, cfg.outer.tbptt, self._apply_update,
                           cfg.outer.minibatches, self.generator, cfg.outer.entropy_coef)
        t_done = time.perf_counter()

        self.normalizer.update(batch.obs, batch.mask)
        if self.reward_normalizer is not None:
            self.reward_normalizer.update(batch.rew[..., None], batch.mask)
        self.env_steps += int(batch.mask.sum().item())
        self.iteration += 1
        returns, success = batch.episode_returns, batch.success
        scalars = {"return/pre": returns[:, 0].mean().item(),
                   "return/post": returns[:, -1].mean().item(),
                   "return/trial": returns.mean().item(),
                   "success/pre": success[:, 0].mean().item(),
                   "success/post": success[:, -1].mean().item(),
                   "baseline/explained_variance_trial": explained_variance.mean().item(),
                   **{f"outer/{k}": v for k, v in stats.items()},
                   "time/sampling": t_sampled - t_start, "time/outer_update": t_done - t_sampled,
                   "time/iteration": t_done - t_start, "env_steps": float(self.env_steps)}
        if self.curriculum is not None:  # success in each trial's last episode
            self.curriculum.update(groups, success[:, -1].cpu().numpy())
            scalars.update(self.curriculum.scalars())
        self._save_episodes(it, tasks, [batch])
        return scalars

    def _task_features(self, tasks: list[Task]) -> torch.Tensor | None:
        """The value network's privileged task input ``[M, F]``, or ``None`` without it."""
        if not self.config.advantages.value_task_features:
            return None
        return torch.from_numpy(np.stack([t.params.features() for t in tasks]))

    def _adaptation_kl(self, rollouts: AdaptationRollouts) -> torch.Tensor:
        """Approximate KL(pre-update || adapted) per task on the first pre-update batch:
        the quantity the device runtime checks before accepting an adaptation. The
        largest values seen recently go into the checkpoint so the export can set the
        runtime's bound from what training produced. With a per-episode latent (whose
        actions given the latent the step leaves alone): the KL of the latent's
        distribution, ``|context' - context|^2 / (2 sigma^2)``."""
        adapted = {k: v.detach() for k, v in rollouts.adapted.items()}
        with torch.no_grad():
            if rollouts.batches[0].latent is not None:
                kl = latent_kl(self.model, self.params["context"].detach(), adapted["context"])
            else:
                pre_inner = maml.batch_to_inner(rollouts.batches[0], rollouts.advs[0])
                _, kl = torch.func.vmap(
                    lambda p, b: inner_loss(self.model, p, b, math.inf))(adapted, pre_inner)
        self.recent_adaptation_kl = (self.recent_adaptation_kl + [kl.max().item()])[-20:]
        return kl

    def _dynamics_losses(self, rollouts: AdaptationRollouts, theta: Params,
                         ) -> dict[str, float]:
        """``inner.loss: dynamics``: the dynamics loss on the first adaptation batch at
        ``theta`` (the parameters that sampled it; ``inner/dynamics_loss_pre``) and at
        the adapted context (``inner/dynamics_loss_post``), means over tasks: how much
        the inner step fits the model to the task (the step descends this loss, so post
        < pre unless the rate is too large)."""
        batch, num_tasks = rollouts.batches[0], rollouts.batches[0].obs.shape[0]
        with torch.no_grad():
            stacked = {k: v.detach().expand(num_tasks, *v.shape) for k, v in theta.items()}
            adapted = {k: v.detach() for k, v in rollouts.adapted.items()}
            pre = maml.task_dynamics_losses(self.model, stacked, batch).mean().item()
            post = maml.task_dynamics_losses(self.model, adapted, batch).mean().item()
        return {"inner/dynamics_loss_pre": pre, "inner/dynamics_loss_post": post}

    def _apply_update(self, loss: torch.Tensor) -> bool:
        """Backward and Adam step; skip (and count) if loss or gradients are non-finite."""
        trainable = list(self.params.values()) + list((self.meta_sgd_lr or {}).values())
        self.optimizer.zero_grad(set_to_none=True)
        finite = bool(torch.isfinite(loss))
        if finite:
            loss.backward()
            grads = [p.grad for p in trainable if p.grad is not None]
            finite = all(bool(torch.isfinite(g).all()) for g in grads)
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_in_a_row += 1
            self._event("non-finite loss or gradient: update skipped",
                        consecutive=self.nonfinite_in_a_row)
            if self.nonfinite_in_a_row >= self.config.max_nonfinite_updates:
                raise TrainingDiverged(
                    f"{self.nonfinite_in_a_row} consecutive non-finite updates at iteration "
                    f"{self.iteration}; the last good checkpoint is {self.checkpoint_path}")
            return False
        self.nonfinite_in_a_row = 0
        torch.nn.utils.clip_grad_norm_(trainable, self.config.outer.max_grad_norm)
        self.optimizer.step()
        return True

    def _iteration_scalars(self, rollouts: AdaptationRollouts, stats: dict[str, float],
                           ) -> dict[str, float]:
        out: dict[str, float] = {}
        last = len(rollouts.batches) - 1
        for k, batch in enumerate(rollouts.batches):
            tag = "pre" if k == 0 else ("post" if k == last else f"step{k}")
            out[f"return/{tag}"] = batch.episode_returns.mean().item()
            out[f"success/{tag}"] = batch.success.mean().item()
            out[f"baseline/explained_variance_{tag}"] = rollouts.explained_variance[k].mean().item()
        for key in ("outer_loss", "outer_kl", "clip_frac", "entropy", "loss", "kl_penalty",
                    "dynamics_loss", "latent_loss", "es_fitness_mean", "es_fitness_std",
                    "es_grad_norm"):
            if key in stats:
                out[f"outer/{'kl' if key == 'kl_penalty' else key}"] = stats[key]
        return out

    def _save_episodes(self, iteration: int, tasks: list[Task],
                       batches: list[EpisodeBatch]) -> None:
        """Per-step rewards, masks and success of every episode, for later inspection."""
        folder = self.run_dir / "episodes"
        folder.mkdir(exist_ok=True)
        arrays = {"task_ids": np.array([t.task_id for t in tasks])}
        for k, b in enumerate(batches):
            arrays[f"rew_{k}"] = b.rew.cpu().numpy().astype(np.float32)
            arrays[f"mask_{k}"] = b.mask.cpu().numpy().astype(np.uint8)
            arrays[f"success_{k}"] = b.success.cpu().numpy().astype(np.uint8)
            if b.latent is not None:
                arrays[f"latent_{k}"] = b.latent.cpu().numpy().astype(np.float32)
        np.savez_compressed(folder / f"iter_{iteration:05d}.npz", **arrays)

    def _event(self, message: str, **fields: Any) -> None:
        if self._logger is not None:
            self._logger.event(message, iteration=self.iteration, **fields)

    def train(self) -> Path:
        """Run until ``config.iterations``; checkpoint every ``checkpoint_every`` iterations,
        at the end and on SIGINT/SIGTERM. Returns the checkpoint path.

        Raises :class:`TrainingStopped` after a signal (once the checkpoint is saved),
        :class:`TrainingDiverged` after too many non-finite updates and ``OSError`` if a
        checkpoint cannot be written; in each case the last checkpoint written stays.
        """
        cfg = self.config
        self._logger = RunLogger(self.run_dir, cfg.iterations, self.iteration, self.progress)
        for note in self._setup_notes:
            self._logger.event(note)
        restore = self._install_signal_handlers()
        try:
            if self.iteration == 0 and not self.checkpoint_path.exists():
                self.save()  # a resumable starting point, even if the first iteration dies
            while self.iteration < cfg.iterations and not self._stop_requested:
                scalars = self.run_iteration()
                self._logger.log(self.iteration, scalars)
                events = self._sampler.events if self._sampler is not None else []
                for event in events[self._events_seen:]:
                    self._logger.event(f"sampler: {event}")
                self._events_seen = len(events)
                if self.iteration % cfg.checkpoint_every == 0 or self._stop_requested:
                    self.save()
            self.save()
            if self._stop_requested:
                self._logger.event(f"stopped by signal; checkpoint saved at iteration "
                                   f"{self.iteration}")
        finally:
            restore()
            self._logger.close()
            self.close()
        if self._stop_signal is not None:
            raise TrainingStopped(self._stop_signal, self.iteration, self.checkpoint_path)
        return self.checkpoint_path

    def _install_signal_handlers(self) -> Callable[[], None]:
        """SIGINT/SIGTERM: finish the iteration, checkpoint, stop. A second one aborts."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, frame: Any) -> None:
            if self._stop_requested:
                raise KeyboardInterrupt  # second signal: abort now, last checkpoint stays
            self._stop_requested = True
            self._stop_signal = signum
            self._event(f"signal {signal.Signals(signum).name}: finishing this iteration, "
                        "then saving a checkpoint (send again to abort)")

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        def restore() -> None:
            for signum, previous_handler in previous.items():
                signal.signal(signum, previous_handler)

        return restore

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.close()
            self._sampler = None

