"""Environment benchmark: env vs raw physics throughput, reset, task switch, 2 processes.

For every family in ``sim_envs.FAMILY_NAMES`` whose module exists (locomotion three times:
flat ground, rough heightfield terrain, and rough terrain with the height scan and the
feet-clearance term, ``observe_heights`` and ``swing_height``), measured in one run:

* **env steps/s**: ``gym.make(env_id)`` (with its TimeLimit wrapper) stepped with uniform
  random actions in one process, resets at episode ends included.
* **raw steps/s**: the same client's ``stepSimulation`` x ``substeps`` alone on the very
  same trajectories: within the env loop, the ``pybullet.stepSimulation`` calls made inside
  ``env.step`` are timed on their own (a wrapper costing well under 1 µs per call, counted
  as env time). Env and raw time thus come from the same seconds, so load from other
  processes hits both alike. ``raw_loop`` is the plain loop ``stepSimulation`` x
  ``substeps`` from the reset state with nothing else; its state (robot at rest) differs
  from random play. Figures are medians over ``rounds`` rounds.
* **reset** (ms, mean and p95): ``env.reset()`` after a few random steps.
* **task switch** (ms): ``set_task`` with a different sampled train task each time; a cold
  pass over the tasks (assets loaded on first use) and a warm pass (checked).
* **2 processes / 1 process**: total env throughput of two worker processes stepping
  concurrently for ``duration`` s, over one worker alone. Each worker's CPU share (process
  CPU time / wall time) is recorded: when other load leaves the workers less than a core
  each, the ratio falls short for that reason; ``two_over_one_per_cpu_second`` (steps per
  CPU-second, 2 workers over 1) near 1.0 shows the workers do not slow each other down.
* **panda-gym**: PandaPickAndPlace-v3 steps/s (``bench/pandagym_bench.py`` run in a separate
  venv, created on first use with ``pip install panda-gym==3.0.7``) next to our Grasp
  worker, measured before and after it; ratio ours / panda-gym per wall second, per
  simulated second and per CPU-second (the last hardly depends on other load).

Targets: env/raw >= 0.85, reset <= 1 ms, task switch <= 15 ms, 2 processes >= 1.7 x one.

Usage::

    python -m bench.bench_envs            # a few minutes
    python -m bench.bench_envs --quick    # about a minute

Writes ``bench/results/envs/bench_envs.json`` and ``bench_envs.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pybullet

import sim_envs
from bench.common import REPO, command_line, machine_info

OUT_DIR = REPO / "bench" / "results" / "envs"
TARGETS = {"env_over_raw": 0.85, "reset_ms": 1.0, "task_switch_ms": 15.0, "two_procs": 1.7}
#: Locomotion is measured on three scenes: parameter overrides of a sampled train task,
#: and env options (the perceptive robot's height scan and feet-clearance term).
SCENES: dict[str, list[tuple[str, dict[str, Any], dict[str, Any]]]] = {
    "locomotion": [("flat", {"terrain": "flat", "difficulty": 0.0}, {}),
                   ("rough", {"terrain": "rough", "difficulty": 0.5}, {}),
                   ("rough-scan-clearance", {"terrain": "rough", "difficulty": 0.5},
                    {"observe_heights": True, "swing_height": 0.1})],
}
DEFAULT_PANDAGYM_VENV = Path("/tmp/pandagym-venv")


# ----------------------------------------------------------------------------- cases
@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmarked scene: a family, optional task-parameter overrides and env options."""

    name: str
    family: str
    overrides: tuple[tuple[str, Any], ...] = ()
    env_kwargs: tuple[tuple[str, Any], ...] = ()

    def make_env(self) -> gym.Env:
        env = gym.make(sim_envs.env_id(self.family), **dict(self.env_kwargs))
        unwrapped = env.unwrapped
        task = unwrapped.sample_tasks(1, "train", seed=0)[0]
        if self.overrides:
            params = dataclasses.replace(task.params, **dict(self.overrides))
            task = unwrapped.family.make_task(params)
        unwrapped.set_task(task)
        return env


def family_available(family: str) -> bool:
    """True if the module behind ``family``'s registered env can be imported."""
    module = gym.spec(sim_envs.env_id(family)).entry_point.split(":")[0]
    return importlib.util.find_spec(module) is not None


def all_cases(families: list[str]) -> tuple[list[Case], list[str]]:
    cases, missing = [], []
    for family in families:
        if not family_available(family):
            missing.append(family)
            continue
        scenes = SCENES.get(family)
        if scenes is None:
            cases.append(Case(family, family))
        else:
            cases += [Case(f"{family}-{scene}", family, tuple(overrides.items()),
                           tuple(env_kwargs.items()))
                      for scene, overrides, env_kwargs in scenes]
    return cases, missing


def random_actions(env: gym.Env, n: int, seed: int) -> np.ndarray:
    space = env.action_space
    return np.random.default_rng(seed).uniform(
        space.low, space.high, size=(n, *space.shape)).astype(space.dtype)


# ----------------------------------------------------------------------------- in-process
class PhysicsTimer:
    """Replaces ``pybullet.stepSimulation`` with a timed call while ``active``.

    Envs call it through ``BulletClient`` (looked up on the module at call time) or
    directly; both reach this wrapper, which uses the env's client id unless given one.
    """

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.seconds = 0.0
        self.calls = 0
        self.active = False
        self._real = pybullet.stepSimulation

    def __call__(self, *args: Any, physicsClientId: int | None = None) -> Any:
        cid = self.client_id if physicsClientId is None else physicsClientId
        if not self.active:
            return self._real(physicsClientId=cid)
        start = time.perf_counter()
        result = self._real(physicsClientId=cid)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return result

    def __enter__(self) -> PhysicsTimer:
        pybullet.stepSimulation = self
        return self

    def __exit__(self, *exc: Any) -> None:
        pybullet.stepSimulation = self._real


def run_env(env: gym.Env, actions: np.ndarray, seed: int,
            timer: PhysicsTimer | None = None) -> float:
    """Step through ``actions`` from ``reset(seed)``; wall seconds of the loop."""
    env.reset(seed=seed)
    start = time.perf_counter()
    for action in actions:
        if timer is not None:
            timer.active = True
        _, _, terminated, truncated, _ = env.step(action)
        if timer is not None:
            timer.active = False
        if terminated or truncated:
            env.reset()
    return time.perf_counter() - start


def measure_throughput(case: Case, steps: int, rounds: int) -> dict[str, Any]:
    env = case.make_env()
    unwrapped = env.unwrapped
    substeps = int(unwrapped.substeps)
    client = unwrapped.client
    client_id = client._client
    dt = client.getPhysicsEngineParameters()["fixedTimeStep"]
    run_env(env, random_actions(env, 200, 99), seed=99)  # warm-up
    env_rates, raw_rates, loop_rates, ratios, loop_ratios = [], [], [], [], []
    for r in range(rounds):
        actions = random_actions(env, steps, seed=r)
        # Env and physics time from the same loop: load from other processes then hits
        # both alike, which keeps their ratio steady on a shared machine.
        with PhysicsTimer(client_id) as timer:
            env_seconds = run_env(env, actions, seed=r, timer=timer)
        if timer.calls != steps * substeps:
            print(f"WARNING {case.name}: {timer.calls} stepSimulation calls in env.step, "
                  f"expected {steps} x substeps={substeps}", flush=True)
        calls_per_step = timer.calls / steps
        env.reset(seed=r)
        start = time.perf_counter()
        for _ in range(steps * substeps):
            client.stepSimulation()
        loop_seconds = time.perf_counter() - start
        env_rates.append(steps / env_seconds)
        raw_rates.append(steps / timer.seconds)
        loop_rates.append(steps / loop_seconds)
        ratios.append(timer.seconds / env_seconds)
        loop_ratios.append(loop_seconds / env_seconds)

    resets = []
    reset_actions = random_actions(env, 5, seed=7)
    for _ in range(100 if steps < 2000 else 300):
        for action in reset_actions:
            env.step(action)
        start = time.perf_counter()
        env.reset()
        resets.append(time.perf_counter() - start)
    env.close()
    return {
        "substeps": substeps, "stepSimulation_calls_per_env_step": calls_per_step,
        "physics_dt_s": dt, "control_dt_s": dt * substeps,
        "steps_per_round": steps, "rounds": rounds,
        "env_steps_per_s": statistics.median(env_rates),
        "raw_steps_per_s": statistics.median(raw_rates),
        "env_over_raw": statistics.median(ratios),
        "env_over_raw_rounds": ratios,
        "raw_loop_steps_per_s": statistics.median(loop_rates),
        "env_over_raw_loop": statistics.median(loop_ratios),
        "reset_ms_mean": 1e3 * float(np.mean(resets)),
        "reset_ms_p95": 1e3 * float(np.percentile(resets, 95)),
    }


def measure_task_switch(family: str, n: int) -> dict[str, float]:
    """``set_task`` times over ``n`` sampled train tasks, each different from the one
    before: a first (cold) pass, where a family may load and cache assets, then a second
    (warm) pass over the same tasks, the steady state of meta-training."""
    env = gym.make(sim_envs.env_id(family))
    tasks = env.unwrapped.sample_tasks(n, "train", seed=1)
    passes = []
    for _ in range(2):
        times = []
        for task in tasks:
            start = time.perf_counter()
            env.unwrapped.set_task(task)
            times.append(1e3 * (time.perf_counter() - start))
        passes.append(times)
    env.close()
    cold, warm = passes
    return {"task_switch_ms_mean": float(np.mean(warm)),
            "task_switch_ms_median": float(np.median(warm)),
            "task_switch_ms_p95": float(np.percentile(warm, 95)),
            "task_switch_ms_max": float(np.max(warm)),
            "task_switch_cold_ms_mean": float(np.mean(cold)),
            "task_switch_cold_ms_max": float(np.max(cold)), "task_switches": n}


# ----------------------------------------------------------------------------- processes
def worker(case_name: str, duration: float, seed: int, families: list[str]) -> None:
    """Worker process: build the env, print ``ready``, wait for stdin, step, print JSON."""
    cases, _ = all_cases(families)
    case = next(c for c in cases if c.name == case_name)
    env = case.make_env()
    actions = random_actions(env, 4096, seed)
    run_env(env, actions[:200], seed)  # warm-up
    env.reset(seed=seed)
    print("ready", flush=True)
    sys.stdin.readline()
    steps = 0
    cpu_start = time.process_time()
    start = time.perf_counter()
    deadline = start + duration
    while True:
        for _ in range(50):  # check the clock every 50 steps
            _, _, terminated, truncated, _ = env.step(actions[steps % len(actions)])
            steps += 1
            if terminated or truncated:
                env.reset()
        now = time.perf_counter()
        if now >= deadline:
            break
    unwrapped = env.unwrapped
    dt = unwrapped.client.getPhysicsEngineParameters()["fixedTimeStep"]
    print(json.dumps({"steps": steps, "seconds": now - start,
                      "cpu_seconds": time.process_time() - cpu_start,
                      "control_dt": dt * unwrapped.substeps}), flush=True)
    env.close()


def run_workers(commands: list[list[str]]) -> list[dict[str, Any]]:
    """Start the worker commands, release them together once all are ready, collect JSON."""
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=REPO) for cmd in commands]
    try:
        for proc in procs:
            lines = []  # pybullet prints its build time on import: skip to "ready"
            while not lines or lines[-1] not in ("ready", ""):
                lines.append(proc.stdout.readline().strip() if proc.stdout else "")
            if lines[-1] != "ready":
                raise RuntimeError(f"worker {proc.args} did not start: {lines}")
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"worker {proc.args} failed with code {proc.returncode}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def our_worker_command(case: Case, duration: float, seed: int, families: list[str]) -> list[str]:
    return [sys.executable, "-m", "bench.bench_envs", "--worker", case.name,
            "--duration", str(duration), "--seed", str(seed), "--families", *families]


def measure_processes(case: Case, duration: float, families: list[str]) -> dict[str, Any]:
    """1 worker, then 2 concurrent workers. CPU shares (process CPU time / wall time) tell
    how much of a core each worker got: other load on the machine lowers them."""
    load_before = os.getloadavg()[0]
    one = run_workers([our_worker_command(case, duration, 0, families)])[0]
    two = run_workers([our_worker_command(case, duration, s, families) for s in (1, 2)])
    one_rate = one["steps"] / one["seconds"]
    two_rate = sum(r["steps"] / r["seconds"] for r in two)
    return {"one_process_steps_per_s": one_rate, "two_processes_steps_per_s": two_rate,
            "two_over_one": two_rate / one_rate, "worker_seconds": duration,
            "one_process_cpu_share": one["cpu_seconds"] / one["seconds"],
            "two_processes_cpu_shares": [r["cpu_seconds"] / r["seconds"] for r in two],
            # Steps per CPU-second, 2 workers over 1: near 1.0 means the workers do not slow
            # each other down beyond sharing the cores.
            "two_over_one_per_cpu_second": (sum(r["steps"] for r in two)
                                            / sum(r["cpu_seconds"] for r in two))
            / (one["steps"] / one["cpu_seconds"]),
            "load_average_1min_before": load_before}


# ----------------------------------------------------------------------------- panda-gym
def ensure_pandagym_venv(venv: Path) -> Path | None:
    """The venv's python with panda-gym 3.0.7, creating the venv if needed; None on failure."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import panda_gym, sys; sys.exit(panda_gym.__version__ != '3.0.7')"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"creating {venv} with panda-gym==3.0.7 ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "panda-gym==3.0.7"],
                       check=True)
    except (subprocess.CalledProcessError, OSError) as err:
        print(f"could not set up panda-gym in {venv}: {err}", flush=True)
        return None
    return python if subprocess.run(check, capture_output=True).returncode == 0 else None


def measure_pandagym(python: Path, grasp: Case | None, duration: float,
                     families: list[str]) -> dict[str, Any]:
    panda_cmd = [str(python), str(Path(__file__).with_name("pandagym_bench.py")),
                 "--duration", str(duration)]
    ours = []
    if grasp is not None:
        ours.append(run_workers([our_worker_command(grasp, duration, 0, families)])[0])
    panda = run_workers([panda_cmd])[0]
    if grasp is not None:
        ours.append(run_workers([our_worker_command(grasp, duration, 0, families)])[0])
    panda_rate = panda["steps"] / panda["seconds"]
    panda_cpu_rate = panda["steps"] / panda["cpu_seconds"]
    result: dict[str, Any] = {
        "pandagym_env": panda["env"], "pandagym_steps_per_s": panda_rate,
        "pandagym_steps_per_cpu_s": panda_cpu_rate,
        "pandagym_control_dt_s": panda["control_dt"],
        "pandagym_command": " ".join(panda_cmd)}
    if ours:
        our_rate = float(np.mean([r["steps"] / r["seconds"] for r in ours]))
        our_cpu_rate = sum(r["steps"] for r in ours) / sum(r["cpu_seconds"] for r in ours)
        result.update({
            "grasp_steps_per_s": our_rate,
            "grasp_steps_per_cpu_s": our_cpu_rate,
            # Steps per CPU-second hardly depend on other load on a shared machine.
            "grasp_over_pandagym_per_cpu_second": our_cpu_rate / panda_cpu_rate,
            "grasp_steps_per_s_before_after": [r["steps"] / r["seconds"] for r in ours],
            "grasp_control_dt_s": ours[0]["control_dt"],
            "grasp_over_pandagym": our_rate / panda_rate,
            # Per simulated second: the two envs may use different control periods.
            "grasp_over_pandagym_sim_time": (our_rate * ours[0]["control_dt"])
            / (panda_rate * panda["control_dt"])})
    return result


# ----------------------------------------------------------------------------- report
def print_table(results: dict[str, dict[str, Any]]) -> None:
    header = (f"{'case':18s} {'env/s':>8s} {'raw/s':>8s} {'env/raw':>8s} {'loop/s':>8s} "
              f"{'reset ms':>9s} {'p95':>6s} {'switch ms':>9s} {'p95':>6s} {'2p/1p':>6s} "
              f"{'cpu-shares 1p|2p':>16s} {'2p/1p per cpu-s':>15s}")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{name:18s} {r['env_steps_per_s']:8.0f} {r['raw_steps_per_s']:8.0f} "
              f"{r['env_over_raw']:8.3f} {r['raw_loop_steps_per_s']:8.0f} "
              f"{r['reset_ms_mean']:9.3f} {r['reset_ms_p95']:6.3f} "
              f"{r['task_switch_ms_mean']:9.2f} {r['task_switch_ms_p95']:6.2f} "
              f"{r.get('two_over_one', float('nan')):6.2f} "
              + (f"{r['one_process_cpu_share']:6.2f} | {r['two_processes_cpu_shares'][0]:.2f}"
                 f" {r['two_processes_cpu_shares'][1]:.2f} {r['two_over_one_per_cpu_second']:15.2f}"
                 if "two_over_one" in r else ""))


def plot(results: dict[str, dict[str, Any]], pandagym: dict[str, Any] | None,
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    x = np.arange(len(names))
    env_rates = [results[n]["env_steps_per_s"] for n in names]
    raw_rates = [results[n]["raw_steps_per_s"] for n in names]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), width_ratios=[2, 1])
    ax.bar(x - 0.2, raw_rates, 0.4, label="raw physics (stepSimulation x substeps)")
    ax.bar(x + 0.2, env_rates, 0.4, label="env (random actions, resets)")
    for i, n in enumerate(names):
        ax.text(x[i] + 0.2, env_rates[i], f"{results[n]['env_over_raw']:.2f}x",
                ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x, names)
    ax.set_ylabel("env steps / s (one process)")
    ax.set_title(f"env vs raw throughput (labels: env/raw, target >= {TARGETS['env_over_raw']})")
    ax.legend(loc="lower right", fontsize=8)

    bars = [(n, results[n]) for n in names if "two_over_one" in results[n]]
    for i, (_, r) in enumerate(bars):
        ax2.bar(i - 0.2, r["one_process_steps_per_s"], 0.4, color="tab:gray",
                label="1 process" if i == 0 else None)
        ax2.bar(i + 0.2, r["two_processes_steps_per_s"], 0.4, color="tab:green",
                label="2 processes" if i == 0 else None)
        ax2.text(i + 0.2, r["two_processes_steps_per_s"], f"{r['two_over_one']:.2f}x",
                 ha="center", va="bottom", fontsize=9)
    ax2.set_xticks(range(len(bars)), [n.replace("-", "\n") for n, _ in bars], fontsize=8)
    title = f"processes (target >= {TARGETS['two_procs']}x; CPU shares: JSON)"
    if pandagym and "grasp_over_pandagym" in pandagym:
        title += f"\nGrasp / panda-gym PickAndPlace: {pandagym['grasp_over_pandagym']:.2f}x"
    ax2.set_title(title, fontsize=10)
    if bars:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (about a minute)")
    parser.add_argument("--families", nargs="+", default=list(sim_envs.FAMILY_NAMES))
    parser.add_argument("--no-pandagym", action="store_true", help="skip the panda-gym run")
    parser.add_argument("--no-processes", action="store_true", help="skip 1 vs 2 processes")
    parser.add_argument("--pandagym-venv", type=Path, default=DEFAULT_PANDAGYM_VENV)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=5.0, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = sorted(set(args.families) - set(sim_envs.FAMILY_NAMES))
    if unknown:
        raise ValueError(f"unknown families {unknown}; known: {list(sim_envs.FAMILY_NAMES)}")
    if args.worker:
        worker(args.worker, args.duration, args.seed, args.families)
        return

    steps, rounds, duration, switches = (600, 2, 2.0, 20) if args.quick else (2500, 3, 5.0, 50)
    info = machine_info(("pybullet", "gymnasium", "numpy"))
    info["command"] = command_line()
    info["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    info["load_average_before"] = os.getloadavg()
    cases, missing = all_cases(args.families)
    for family in missing:
        print(f"SKIPPED family {family!r}: its env module does not exist yet", flush=True)

    results: dict[str, dict[str, Any]] = {}
    switch_by_family: dict[str, dict[str, float]] = {}
    errors: dict[str, str] = {}
    for case in cases:
        print(f"measuring {case.name} ...", flush=True)
        try:
            if case.family not in switch_by_family:
                switch_by_family[case.family] = measure_task_switch(case.family, switches)
            r = measure_throughput(case, steps, rounds)
            r.update(switch_by_family[case.family])
            if not args.no_processes:
                r.update(measure_processes(case, duration, args.families))
        except Exception as err:  # keep measuring the other families; report the failure
            errors[case.name] = f"{type(err).__name__}: {err}"
            print(f"FAILED {case.name}: {errors[case.name]}", flush=True)
            continue
        results[case.name] = r

    pandagym = None
    if not args.no_pandagym:
        python = ensure_pandagym_venv(args.pandagym_venv)
        if python is None:
            print("SKIPPED panda-gym comparison: no panda-gym venv", flush=True)
        else:
            grasp = next((c for c in cases if c.family == "grasp" and c.name in results), None)
            if grasp is None:
                print("panda-gym measured alone: the grasp family is missing", flush=True)
            pandagym = measure_pandagym(python, grasp, duration, args.families)

    checks = {}
    for name, r in results.items():
        checks[name] = {
            "env_over_raw": r["env_over_raw"] >= TARGETS["env_over_raw"],
            "reset_ms": r["reset_ms_mean"] <= TARGETS["reset_ms"],
            "task_switch_ms": r["task_switch_ms_mean"] <= TARGETS["task_switch_ms"],
        }
        if "two_over_one" in r:
            checks[name]["two_procs"] = r["two_over_one"] >= TARGETS["two_procs"]
    info["load_average_after"] = os.getloadavg()

    print()
    print_table(results)
    if pandagym:
        print(f"\npanda-gym {pandagym['pandagym_env']}: "
              f"{pandagym['pandagym_steps_per_s']:.0f} steps/s "
              f"(control dt {pandagym['pandagym_control_dt_s']:.3f} s)")
        if "grasp_over_pandagym" in pandagym:
            print(f"our Grasp: {pandagym['grasp_steps_per_s']:.0f} steps/s (control dt "
                  f"{pandagym['grasp_control_dt_s']:.3f} s); ours / panda-gym = "
                  f"{pandagym['grasp_over_pandagym']:.2f} per step, "
                  f"{pandagym['grasp_over_pandagym_sim_time']:.2f} per simulated second, "
                  f"{pandagym['grasp_over_pandagym_per_cpu_second']:.2f} per CPU-second")
    failed = [f"{n}:{k}" for n, c in checks.items() for k, ok in c.items() if not ok]
    print("\ntargets:", TARGETS)
    print("all targets met" if not failed else f"targets missed: {failed}")
    if missing:
        print(f"families skipped (module missing): {missing}")
    if errors:
        print(f"cases that failed: {errors}")

    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": info, "targets": TARGETS, "results": results, "checks": checks,
              "pandagym": pandagym, "skipped_families": missing, "errors": errors,
              "method": __doc__}
    (args.out / "bench_envs.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, pandagym, args.out / "bench_envs.png")
    print(f"wrote {args.out / 'bench_envs.json'} and {args.out / 'bench_envs.png'}")


if __name__ == "__main__":
    main()
