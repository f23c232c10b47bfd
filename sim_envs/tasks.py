"""The meta-RL task API: typed task parameters, frozen tasks and task families.

A *task family* (reach, grasp, locomotion, walk) describes a distribution of related tasks.
A :class:`Task` is one draw from it: frozen, hashable, JSON-serialisable, holding the
family name, the split it belongs to, a stable id and the physical parameters.

Each family declares its parameters as a frozen dataclass subclassing
:class:`TaskParams`, with one :class:`ParamSpec` per field giving the unit, the range of
each split and whether the parameter is hidden from the observation. Train and test
splits are disjoint *by construction*: every family implements :meth:`TaskFamily.split_of`,
which classifies any parameter set, and sampling for a split only returns parameter sets
that classify into that split.

Example::

    from sim_envs import make_family
    family = make_family("grasp")
    tasks = family.sample_tasks(10, split="test", seed=0)
    task = Task.from_json(tasks[0].to_json())
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import zlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

Split = Literal["train", "test"]
SPLITS: tuple[Split, ...] = ("train", "test")


@dataclass(frozen=True)
class ParamSpec:
    """Documentation and bounds of one task parameter.

    Attributes:
        unit: physical unit ("m", "kg", "rad", "" for dimensionless or categorical).
        low, high: overall admissible range for numeric parameters (inclusive).
        choices: admissible values for a categorical parameter (then low/high unused).
        hidden: True if the parameter is not observable by the policy.
        doc: one-line description.
        feature: False for a parameter that says nothing a learner could use (a random
            seed): :meth:`TaskParams.features` leaves it out.
    """

    unit: str = ""
    low: float = -math.inf
    high: float = math.inf
    choices: tuple[Any, ...] | None = None
    hidden: bool = True
    doc: str = ""
    feature: bool = True

    def encode(self, value: Any) -> list[float]:
        """``value`` as numbers of order 1 (see :meth:`TaskParams.features`)."""
        if self.choices is not None:
            return [float(value == c) for c in self.choices]
        if self.unit == "rad":
            return [math.cos(value), math.sin(value)]
        if math.isfinite(self.low) and math.isfinite(self.high) and self.high > self.low:
            return [2.0 * (float(value) - self.low) / (self.high - self.low) - 1.0]
        return [float(value)]

    @property
    def encoded_size(self) -> int:
        """Length of :meth:`encode`'s list (the same for every admissible value)."""
        example = self.choices[0] if self.choices is not None else 0.0
        return len(self.encode(example))


def param(spec: ParamSpec, default: Any = dataclasses.MISSING) -> Any:
    """Declare a :class:`TaskParams` field with its :class:`ParamSpec` attached."""
    return field(default=default, metadata={"spec": spec})


@dataclass(frozen=True)
class TaskParams:
    """Base class of a family's parameter dataclass (frozen, typed, validated)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            spec: ParamSpec | None = f.metadata.get("spec")
            if spec is None:
                continue
            if spec.choices is not None:
                if value not in spec.choices:
                    raise ValueError(
                        f"{type(self).__name__}.{f.name}={value!r} is not one of {spec.choices}"
                    )
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
                raise ValueError(
                    f"{type(self).__name__}.{f.name} must be a number, got {value!r}"
                )
            if not math.isfinite(float(value)):
                raise ValueError(f"{type(self).__name__}.{f.name} must be finite, got {value!r}")
            if not spec.low <= float(value) <= spec.high:
                raise ValueError(
                    f"{type(self).__name__}.{f.name}={value!r} is out of range "
                    f"[{spec.low}, {spec.high}] {spec.unit}".rstrip()
                )
            # Store plain Python floats so JSON and hashing never see numpy scalars.
            if isinstance(value, np.floating) or (
                isinstance(value, int) and f.type in ("float", float)
            ):
                object.__setattr__(self, f.name, float(value))

    @classmethod
    def specs(cls) -> dict[str, ParamSpec]:
        """Parameter name -> :class:`ParamSpec`, in declaration order."""
        return {f.name: f.metadata["spec"] for f in dataclasses.fields(cls) if "spec" in f.metadata}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TaskParams:
        """Build from a mapping; unknown or missing names raise ``ValueError``."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {unknown} for {cls.__name__}; known: {names}"
            )
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in values and f.default is dataclasses.MISSING]
        if missing:
            raise ValueError(f"missing parameter(s) {missing} for {cls.__name__}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def features(self) -> np.ndarray:
        """The parameters as numbers of order 1, ``[feature_size()]`` float32.

        For learners that may see the task in simulation only (a privileged value
        function): a categorical parameter is one-hot over its choices, an angle (unit
        "rad") is its cosine and sine, any other number is mapped from its range to
        [-1, 1]. Parameters with ``feature=False`` are left out.
        """
        out = [x for name, spec in self.specs().items() if spec.feature
               for x in spec.encode(getattr(self, name))]
        return np.asarray(out, dtype=np.float32)

    @classmethod
    def feature_size(cls) -> int:
        """Length of :meth:`features`."""
        return sum(s.encoded_size for s in cls.specs().values() if s.feature)


@dataclass(frozen=True)
class Task:
    """One task of a family: frozen, hashable, JSON-serialisable.

    Attributes:
        family: family name, e.g. ``"grasp"``.
        split: ``"train"`` or ``"test"``.
        params: the family's typed parameters (physical values in SI units).
        task_id: stable id derived from family, split and parameters.
    """

    family: str
    split: Split
    params: TaskParams
    task_id: str = ""

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if not self.task_id:
            payload = json.dumps([self.family, self.split, self.params.to_dict()], sort_keys=True)
            digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
            object.__setattr__(self, "task_id", f"{self.family}-{self.split}-{digest}")

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "split": self.split, "task_id": self.task_id,
                "params": self.params.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Task:
        """Inverse of :meth:`to_dict`; validates family, parameters and split membership."""
        from sim_envs.registry import make_family  # late import: families import this module

        unknown = sorted(set(data) - {"family", "split", "task_id", "params"})
        if unknown:
            raise ValueError(f"unknown task field(s) {unknown}")
        family = make_family(data["family"])
        task = family.make_task(data["params"], split=data["split"])
        if data.get("task_id") and data["task_id"] != task.task_id:
            raise ValueError(
                f"task_id {data['task_id']!r} does not match its parameters ({task.task_id!r})"
            )
        return task

    @staticmethod
    def from_json(text: str) -> Task:
        return Task.from_dict(json.loads(text))


class TaskFamily(ABC):
    """A distribution of tasks with a fixed train/test split.

    Subclasses set :attr:`name`, :attr:`params_type` and implement :meth:`_sample_params`
    (draw one parameter set of a split) and :meth:`split_of` (which split a parameter set
    belongs to). Everything else is shared.
    """

    name: ClassVar[str]
    params_type: ClassVar[type[TaskParams]]
    #: Human-readable description of how train and test are separated.
    split_doc: ClassVar[str] = ""
    #: The groups :meth:`difficulty_group` can return, in a fixed order (empty: the
    #: family's tasks have no difficulty a curriculum can scale).
    difficulty_groups: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def _sample_params(self, rng: np.random.Generator, split: Split) -> TaskParams:
        """Draw one parameter set of ``split`` using ``rng`` only."""

    @abstractmethod
    def split_of(self, params: TaskParams) -> Split:
        """The split this parameter set belongs to (train and test are disjoint)."""

    def sample_tasks(self, n: int, split: Split = "train", seed: int | None = None) -> list[Task]:
        """Sample ``n`` tasks of ``split``. The same seed always gives the same tasks."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        # Mix split and family into the seed so their streams differ for the same seed.
        rng = (np.random.default_rng() if seed is None else
               np.random.default_rng([int(seed), SPLITS.index(split), stable_hash(self.name)]))
        tasks = []
        for _ in range(int(n)):
            params = self._sample_params(rng, split)
            tasks.append(self._checked_task(params, split))
        return tasks

    def sample_balanced(self, n: int, split: Split, seed: int, by: str) -> list[Task]:
        """``n`` tasks of ``split`` with each value of parameter ``by`` in equal share (as
        near as ``n`` allows: the first values in sorted order get one more).

        Drawn from :meth:`sample_tasks`'s stream for ``seed`` (a pool of ``8 n``), taking
        each value's tasks in pool order, so the same seed always gives the same tasks.
        ``by`` must take few values (a choice, walk's heading): a random draw of 10 walk
        tasks gives 5 +- 1.6 forward, a balanced one exactly 5.
        """
        if by not in self.params_type.specs():
            raise ValueError(f"family {self.name!r} has no task parameter {by!r}; its "
                             f"parameters are {sorted(self.params_type.specs())}")
        pool = self.sample_tasks(8 * n, split, seed=seed)
        by_value: dict[Any, list[Task]] = {}
        for task in pool:
            by_value.setdefault(getattr(task.params, by), []).append(task)
        if len(by_value) > max(n, 1):
            raise ValueError(f"parameter {by!r} of family {self.name!r} took {len(by_value)} "
                             f"values in {len(pool)} draws: too many to balance {n} tasks "
                             "over (balance a parameter with a few values)")
        queues = [by_value[v] for v in sorted(by_value)]
        tasks: list[Task] = []
        while len(tasks) < n:  # round robin; a value whose draws ran out is skipped
            tasks += [q.pop(0) for q in queues if q][: n - len(tasks)]
        return tasks

    @property
    def has_difficulty(self) -> bool:
        """Whether tasks have a difficulty a curriculum can scale (:meth:`at_level`)."""
        return bool(self.difficulty_groups)

    def difficulty_group(self, task: Task) -> str | None:
        """The group a curriculum keeps one level for (e.g. the terrain type), or ``None``
        when the task has no difficulty to scale. Families with :attr:`has_difficulty`
        implement it and :meth:`at_level`."""
        raise NotImplementedError(f"family {self.name!r} has no task difficulty to schedule")

    def at_level(self, task: Task, level: float) -> Task:
        """``task`` with its difficulty scaled by ``level`` in [0, 1] (see
        :meth:`difficulty_group`)."""
        raise NotImplementedError(f"family {self.name!r} has no task difficulty to schedule")

    def make_task(self, params: TaskParams | Mapping[str, Any], split: Split | None = None) -> Task:
        """Build a task from explicit parameters (validated; split inferred if not given)."""
        if not isinstance(params, TaskParams):
            params = self.params_type.from_dict(params)
        if not isinstance(params, self.params_type):
            raise ValueError(
                f"family {self.name!r} expects {self.params_type.__name__}, "
                f"got {type(params).__name__}"
            )
        return self._checked_task(params, split if split is not None else self.split_of(params))

    def _checked_task(self, params: TaskParams, split: Split) -> Task:
        actual = self.split_of(params)
        if actual != split:
            raise ValueError(f"{params} belongs to the {actual!r} split, not {split!r}")
        return Task(family=self.name, split=split, params=params)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description: parameters, units, ranges, hidden flags, split rule."""
        return {
            "family": self.name,
            "split": self.split_doc,
            "params": {
                name: {"unit": s.unit, "low": s.low, "high": s.high,
                       "choices": list(s.choices) if s.choices is not None else None,
                       "hidden": s.hidden, "doc": s.doc}
                for name, s in self.params_type.specs().items()
            },
        }


def stable_hash(text: str) -> int:
    """Stable 32-bit hash of a string (Python's ``hash`` is salted per process)."""
    return zlib.crc32(text.encode())


def sample_uniform(rng: np.random.Generator, bounds: Sequence[float]) -> float:
    """A float drawn uniformly from ``[bounds[0], bounds[1]]``."""
    return float(rng.uniform(bounds[0], bounds[1]))
