"""SB3 baselines for the meta-learning results (issue 5): seeded, reusable, documented.

Two baselines, on the same held-out test tasks as the meta-learned policy:

(a) **Multi-task PPO, then fine-tuning.** :func:`train_multitask_ppo` trains SB3's PPO on
    the family's *training* tasks (:class:`MultiTaskWrapper` sets a freshly drawn training
    task at every reset, from a seeded stream), for as many env steps as meta-training
    used. :func:`finetune_on_tasks` then fine-tunes a copy of it on each test task with the
    meta-policy's adaptation budget: ``adapt_steps`` steps of ``episodes`` episodes each,
    every step one PPO update (``n_steps = episodes * episode_length``, one env) on exactly
    that data. Return and success are measured before fine-tuning and after every step on
    ``episodes`` *fresh* evaluation episodes, which are not used for learning.

(b) **PPO from scratch.** :func:`ppo_from_scratch_to_target` trains a new PPO on one test
    task until the mean return of ``episodes`` fresh evaluation episodes reaches a target
    (the adapted meta-policy's return on that task) or a step cap is hit.

Both evaluate with stochastic actions, as the meta-policy's evaluation does (its returns
come from the episodes it samples). Observations are normalised with SB3's
``VecNormalize`` (the meta-policy normalises its observations too); the statistics of the
multi-task policy are frozen while fine-tuning, so its input scaling stays the one it
learned with.

Budget note: a fine-tuning step gets ``episodes * episode_length`` env steps. Where
episodes can end early (locomotion: falls) that is *more* data than the meta-policy's
``episodes`` episodes, so the comparison errs in the baseline's favour.

Example::

    base = train_multitask_ppo("reach", total_timesteps=100_000, seed=0)
    tasks = make_family("reach").sample_tasks(20, "test", seed=0)
    ft = finetune_on_tasks(base, tasks, episodes=10, adapt_steps=3, seed=0)
    ft.returns  # [4, 20]: before fine-tuning and after 1, 2, 3 steps
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch

from sim_envs.registry import env_id, make_family, register_envs
from sim_envs.tasks import Split, Task

#: PPO settings of the multi-task baseline (SB3's defaults, n_steps per env).
MULTITASK_PPO: dict[str, Any] = {"n_steps": 1024, "batch_size": 64, "n_epochs": 10,
                                 "learning_rate": 3e-4, "gamma": 0.99, "gae_lambda": 0.95,
                                 "clip_range": 0.2, "ent_coef": 0.0}
#: PPO settings of a fine-tuning step (``n_steps`` is set from the adaptation budget).
FINETUNE_PPO: dict[str, Any] = {"batch_size": 64, "n_epochs": 10, "learning_rate": 3e-4,
                                "gamma": 0.99, "gae_lambda": 0.95, "clip_range": 0.2,
                                "ent_coef": 0.0}
#: PPO settings of the from-scratch baseline (SB3's defaults).
SCRATCH_PPO: dict[str, Any] = {"n_steps": 2048, "batch_size": 64, "n_epochs": 10,
                               "learning_rate": 3e-4, "gamma": 0.99, "gae_lambda": 0.95,
                               "clip_range": 0.2, "ent_coef": 0.0}


#: torch intra-op threads while an SB3 baseline runs. SB3's 64x64 MLP updates are tiny:
#: on the shared 2-core machine one fine-tuning task took 22.4 s with torch's default of 2
#: threads and 3.4 s with 1 (threads waiting on each other under load).
TORCH_THREADS = 1


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads (None: unchanged), restored afterwards."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _few_threads(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch_threads(TORCH_THREADS):
            return fn(*args, **kwargs)
    return wrapper


def episode_length(family: str) -> int:
    """Max steps of an episode of ``family`` (its registered TimeLimit)."""
    register_envs()
    return int(gymnasium.spec(env_id(family)).max_episode_steps)


def make_env(family: str, env_kwargs: dict[str, Any] | None = None) -> gymnasium.Env:
    register_envs()
    return gymnasium.make(env_id(family), **(env_kwargs or {}))


def _seed_int(*parts: int) -> int:
    """A 31-bit seed mixed from integers (SB3 and gymnasium want plain ints)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] >> 1)


# ---------------------------------------------------------------------------- wrappers
class MultiTaskWrapper(gymnasium.Wrapper):
    """Sets a new task of ``split`` at every reset.

    Tasks come from the env's own ``sample_tasks(..., split)``: a fresh draw per reset
    from a stream seeded by ``seed`` (the meta-trainer also draws fresh training tasks
    every iteration), or, with ``pool_size``, uniformly from a fixed pool of that many.

    Attributes:
        tasks_set: how many tasks have been set so far.
        task: the task of the current episode.
    """

    def __init__(self, env: gymnasium.Env, seed: int, split: Split = "train",
                 pool_size: int | None = None) -> None:
        super().__init__(env)
        self.split = split
        self._rng = np.random.default_rng(seed)
        self._pool = (None if pool_size is None else
                      env.unwrapped.sample_tasks(pool_size, split, seed=_seed_int(seed, 1)))
        self.tasks_set = 0
        self.task: Task | None = None

    def _next_task(self) -> Task:
        if self._pool is not None:
            return self._pool[int(self._rng.integers(len(self._pool)))]
        (task,) = self.env.unwrapped.sample_tasks(1, self.split,
                                                  seed=int(self._rng.integers(2**31)))
        return task

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        self.task = self._next_task()
        self.tasks_set += 1
        return self.env.reset(seed=seed, options={**(options or {}), "task": self.task})


class StepCounter(gymnasium.Wrapper):
    """Counts env steps and finished episodes (to check what a budget really consumed)."""

    def __init__(self, env: gymnasium.Env) -> None:
        super().__init__(env)
        self.steps = 0
        self.episodes = 0

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        self.episodes += int(terminated or truncated)
        return obs, reward, terminated, truncated, info


def _multitask_env_fn(family: str, seed: int, rank: int, pool_size: int | None,
                      env_kwargs: dict[str, Any] | None) -> Callable[[], gymnasium.Env]:
    def make() -> gymnasium.Env:
        return MultiTaskWrapper(make_env(family, env_kwargs), seed=_seed_int(seed, rank),
                                split="train", pool_size=pool_size)
    return make


def _fixed_task_env_fn(family: str, task: Task,
                       env_kwargs: dict[str, Any] | None) -> Callable[[], gymnasium.Env]:
    def make() -> gymnasium.Env:
        env = make_env(family, env_kwargs)
        env.unwrapped.set_task(task)  # stays set across resets
        return StepCounter(env)
    return make


# ---------------------------------------------------------------------------- policies
@dataclass
class SB3Policy:
    """An SB3 PPO model with the ``VecNormalize`` statistics it was trained with."""

    model: Any  #: stable_baselines3.PPO
    vec_normalize: Any | None  #: stable_baselines3 VecNormalize (None: raw observations)

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        if self.vec_normalize is not None:
            obs = self.vec_normalize.normalize_obs(obs)
        return self.model.predict(obs, deterministic=deterministic)[0]

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save(folder / "model.zip")
        if self.vec_normalize is not None:
            self.vec_normalize.save(str(folder / "vecnormalize.pkl"))


def _vec_normalize(venv: Any, source: Any | None, training: bool, gamma: float) -> Any:
    """Wrap ``venv`` in ``VecNormalize``: fresh, or with a copy of ``source``'s statistics."""
    from stable_baselines3.common.vec_env import VecNormalize

    vn = VecNormalize(venv, training=training, norm_obs=True, norm_reward=True, gamma=gamma)
    if source is not None:
        vn.obs_rms = copy.deepcopy(source.obs_rms)
        vn.ret_rms = copy.deepcopy(source.ret_rms)
        vn.clip_obs, vn.clip_reward, vn.epsilon = source.clip_obs, source.clip_reward, \
            source.epsilon
    return vn


def _policy_kwargs(hidden: Sequence[int], log_std_init: float | None = None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"net_arch": {"pi": list(hidden), "vf": list(hidden)}}
    if log_std_init is not None:
        kwargs["log_std_init"] = float(log_std_init)
    return kwargs


def _load_stats(folder: Path) -> Any | None:
    """The ``VecNormalize`` statistics :meth:`SB3Policy.save` wrote (None if it had none)."""
    import pickle

    path = Path(folder) / "vecnormalize.pkl"
    if not path.exists():
        return None
    with path.open("rb") as f:
        return pickle.load(f)  # our own file, written by VecNormalize.save


def load_sb3_policy(folder: str | Path, family: str,
                    env_kwargs: dict[str, Any] | None = None) -> SB3Policy:
    """Load what :meth:`SB3Policy.save` wrote (frozen statistics, one plain env attached)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    stats = _load_stats(Path(folder))
    venv = DummyVecEnv([lambda: make_env(family, env_kwargs)])
    vn = None if stats is None else _vec_normalize(venv, stats, training=False,
                                                   gamma=stats.gamma)
    model = PPO.load(Path(folder) / "model.zip", env=vn or venv, device="cpu")
    return SB3Policy(model, vn)


# ---------------------------------------------------------------------------- evaluation
@dataclass
class EpisodeStats:
    """Fresh evaluation episodes of one task: per-episode return, success and length, and
    the ``info`` of each episode's last step (e.g. locomotion's ``progress``)."""

    returns: np.ndarray
    success: np.ndarray
    lengths: np.ndarray
    final_infos: list[dict[str, Any]] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return int(self.lengths.sum())


def evaluate_on_task(policy: SB3Policy, env: gymnasium.Env, task: Task, episodes: int,
                     seed: int, deterministic: bool = False) -> EpisodeStats:
    """Run ``episodes`` episodes of ``task`` on ``env`` (reset seeds ``seed + i``); no
    learning, no statistics update. Returns are the env's raw rewards."""
    env.unwrapped.set_task(task)
    torch.manual_seed(seed)  # the policy's action noise
    returns, success, lengths, final_infos = [], [], [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, n, done, info = 0.0, 0, False, {}
        while not done:
            obs, reward, terminated, truncated, info = env.step(policy.act(obs, deterministic))
            total += float(reward)
            n += 1
            done = terminated or truncated
        returns.append(total)
        success.append(float(bool(info.get("success", False))))
        lengths.append(n)
        final_infos.append(info)
    return EpisodeStats(np.array(returns), np.array(success), np.array(lengths), final_infos)


# ---------------------------------------------------------------------------- (a) multi-task PPO
@_few_threads
def train_multitask_ppo(family: str, total_timesteps: int, seed: int,
                        init: SB3Policy | str | Path | None = None, n_envs: int = 1,
                        hidden: Sequence[int] = (64, 64), pool_size: int | None = None,
                        ppo_kwargs: dict[str, Any] | None = None,
                        env_kwargs: dict[str, Any] | None = None,
                        log_std_init: float | None = None) -> SB3Policy:
    """Train PPO on ``family``'s training tasks until it has ``total_timesteps`` env steps.

    Args:
        total_timesteps: the model's total (``model.num_timesteps``) to reach; with ``init``
            training continues from its count. SB3 collects whole rollouts
            (``n_steps * n_envs``), so the total can exceed this by less than one rollout.
        seed: seeds PPO, the envs and every env's task stream. Continuing from a saved
            ``init`` with the same seed and target gives the same result whether or not
            the process was interrupted in between.
        init: a policy (or a folder :meth:`SB3Policy.save` wrote) to continue from.
        n_envs: parallel envs (``SubprocVecEnv`` above 1; ``n_steps`` is per env).
        pool_size: cycle a fixed pool of training tasks instead of fresh draws.
        log_std_init: initial log-std of a new model's Gaussian actions (None: SB3's 0.0,
            std 1); ignored when continuing from ``init``.
    """
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    kwargs = {**MULTITASK_PPO, **(ppo_kwargs or {})}
    fns = [_multitask_env_fn(family, seed, rank, pool_size, env_kwargs) for rank in range(n_envs)]
    venv = SubprocVecEnv(fns) if n_envs > 1 else DummyVecEnv(fns)
    if init is None:
        vn = _vec_normalize(venv, None, training=True, gamma=kwargs["gamma"])
        model = PPO("MlpPolicy", vn, seed=seed, device="cpu", verbose=0,
                    policy_kwargs=_policy_kwargs(hidden, log_std_init), **kwargs)
    elif isinstance(init, SB3Policy):
        vn = _vec_normalize(venv, init.vec_normalize, training=True, gamma=kwargs["gamma"])
        model = init.model
        model.set_env(vn)
    else:  # a saved folder: continue its model and statistics on the new envs
        vn = _vec_normalize(venv, _load_stats(Path(init)), training=True,
                            gamma=kwargs["gamma"])
        model = PPO.load(Path(init) / "model.zip", env=vn, device="cpu")
    if init is not None:
        model.set_random_seed(seed)
    remaining = int(total_timesteps) - int(model.num_timesteps)
    try:
        if remaining > 0:
            model.learn(total_timesteps=remaining, reset_num_timesteps=False)
    finally:
        venv.close()
    return SB3Policy(model, vn)


@dataclass
class FinetuneResult:
    """Fine-tuning on M tasks with K steps of E episodes.

    Attributes:
        returns, success: ``[K+1, M]`` mean return and success rate of each task's fresh
            evaluation episodes before fine-tuning (row 0) and after each step.
        train_steps: ``[M]`` env steps each task's fine-tuning consumed (``K * E * T``).
        eval_steps: ``[M]`` env steps of its evaluation episodes (not learned from).
    """

    task_ids: list[str]
    returns: np.ndarray
    success: np.ndarray
    train_steps: np.ndarray
    eval_steps: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


@_few_threads
def finetune_on_tasks(base: SB3Policy, tasks: Sequence[Task], episodes: int, adapt_steps: int,
                      seed: int, ppo_kwargs: dict[str, Any] | None = None,
                      env_kwargs: dict[str, Any] | None = None,
                      progress: Callable[[str], None] | None = None) -> FinetuneResult:
    """Fine-tune a copy of ``base`` on each task with ``adapt_steps`` PPO updates of
    ``episodes * episode_length`` env steps each; evaluate before and after every update
    on ``episodes`` fresh episodes (stochastic actions)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    if not tasks:
        raise ValueError("no tasks to fine-tune on")
    family = tasks[0].family
    horizon = episode_length(family)
    budget = episodes * horizon
    kwargs = {**FINETUNE_PPO, **(ppo_kwargs or {}), "n_steps": budget}
    # Whole minibatches: the largest divisor of the budget not above the configured size.
    kwargs["batch_size"] = max(d for d in range(1, min(kwargs["batch_size"], budget) + 1)
                               if budget % d == 0)
    hidden = base.model.policy_kwargs.get("net_arch", {}).get("pi", [64, 64])
    returns = np.zeros((adapt_steps + 1, len(tasks)))
    success = np.zeros_like(returns)
    train_steps = np.zeros(len(tasks), dtype=np.int64)
    eval_steps = np.zeros(len(tasks), dtype=np.int64)
    eval_env = make_env(family, env_kwargs)
    t0 = time.perf_counter()
    try:
        for j, task in enumerate(tasks):
            venv = DummyVecEnv([_fixed_task_env_fn(family, task, env_kwargs)])
            counter: StepCounter = venv.envs[0]
            vn = (_vec_normalize(venv, base.vec_normalize, training=False, gamma=kwargs["gamma"])
                  if base.vec_normalize is not None else venv)
            model = PPO("MlpPolicy", vn, seed=_seed_int(seed, j, 1), device="cpu", verbose=0,
                        policy_kwargs=_policy_kwargs(hidden), **kwargs)
            model.policy.load_state_dict(base.model.policy.state_dict())
            policy = SB3Policy(model, vn if base.vec_normalize is not None else None)
            for k in range(adapt_steps + 1):
                if k > 0:
                    model.learn(total_timesteps=budget, reset_num_timesteps=True)
                stats = evaluate_on_task(policy, eval_env, task, episodes,
                                         seed=_seed_int(seed, j, k, 2))
                returns[k, j], success[k, j] = stats.returns.mean(), stats.success.mean()
                eval_steps[j] += stats.steps
            train_steps[j] = counter.steps
            venv.close()
            if progress is not None:
                progress(f"fine-tuned task {j + 1}/{len(tasks)}: returns "
                         + " ".join(f"{r:.2f}" for r in returns[:, j]))
    finally:
        eval_env.close()
    return FinetuneResult([t.task_id for t in tasks], returns, success, train_steps, eval_steps,
                          meta={"episodes": episodes, "adapt_steps": adapt_steps,
                                "episode_length": horizon, "steps_per_update": budget,
                                "ppo": kwargs, "seed": seed,
                                "wall_s": time.perf_counter() - t0})


# ---------------------------------------------------------------------------- (b) from scratch
@dataclass
class ScratchResult:
    """PPO from scratch on one task against a target return.

    Attributes:
        reached: the evaluation mean return reached ``target_return``.
        steps: training env steps when it was reached, else all steps trained (>= cap).
        history: ``(training steps, evaluation mean return)`` after every chunk.
    """

    task_id: str
    target_return: float
    reached: bool
    steps: int
    cap: int
    history: list[tuple[int, float]]
    wall_s: float

    def describe(self) -> str:
        return str(self.steps) if self.reached else f"> {self.cap}"


@_few_threads
def ppo_from_scratch_to_target(task: Task, target_return: float, cap: int, eval_every: int,
                               episodes: int, seed: int, hidden: Sequence[int] = (64, 64),
                               ppo_kwargs: dict[str, Any] | None = None,
                               env_kwargs: dict[str, Any] | None = None) -> ScratchResult:
    """Train a fresh PPO on ``task`` in chunks of ``eval_every`` env steps; after each chunk
    evaluate ``episodes`` fresh episodes and stop once their mean return is >=
    ``target_return``, or once ``cap`` training steps are spent. Evaluation steps are not
    counted as training steps. Resolution: one chunk (rounded up to whole rollouts)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    if cap < 1 or eval_every < 1:
        raise ValueError("cap and eval_every must be >= 1")
    kwargs = {**SCRATCH_PPO, **(ppo_kwargs or {})}
    family = task.family
    venv = DummyVecEnv([_fixed_task_env_fn(family, task, env_kwargs)])
    counter: StepCounter = venv.envs[0]
    vn = _vec_normalize(venv, None, training=True, gamma=kwargs["gamma"])
    model = PPO("MlpPolicy", vn, seed=seed, device="cpu", verbose=0,
                policy_kwargs=_policy_kwargs(hidden), **kwargs)
    policy = SB3Policy(model, vn)
    eval_env = make_env(family, env_kwargs)
    history: list[tuple[int, float]] = []
    reached = False
    t0 = time.perf_counter()
    try:
        while counter.steps < cap:
            model.learn(total_timesteps=min(eval_every, cap - counter.steps),
                        reset_num_timesteps=False)
            stats = evaluate_on_task(policy, eval_env, task, episodes,
                                     seed=_seed_int(seed, len(history), 3))
            history.append((counter.steps, float(stats.returns.mean())))
            if stats.returns.mean() >= target_return:
                reached = True
                break
    finally:
        venv.close()
        eval_env.close()
    return ScratchResult(task.task_id, float(target_return), reached, int(counter.steps), cap,
                         history, time.perf_counter() - t0)


def held_out_tasks(family: str, num_tasks: int, seed: int) -> list[Task]:
    """The held-out tasks the meta-policy is evaluated on (same call as ``evaluate_policy``)."""
    return make_family(family).sample_tasks(num_tasks, "test", seed=seed)


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: undefined values (a CI from one sample) become ``null``."""
    return None if value is None or not math.isfinite(value) else float(value)
