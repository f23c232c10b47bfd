"""A terrain curriculum in the style of legged_gym's terrain levels, for meta-training.

legged_gym moves each robot to harder terrain when it walks far enough and back when it
does not. Here the unit is the meta-batch's task: the curriculum keeps one **level** in
[0, 1] per group of the family (locomotion: per terrain type,
:meth:`sim_envs.tasks.TaskFamily.difficulty_group`), and every training task's difficulty
is multiplied by its group's level before sampling
(:meth:`~sim_envs.tasks.TaskFamily.at_level`). Tasks are drawn exactly as without it
(same seeds, same parameters otherwise), so a level of 1 is the family's own training
distribution; at level 0.3 a stairs task's difficulty is uniform over [0, 0.3 x 0.8].

After each iteration a group's level moves by ``step``: up when the adapted policy's
success on that group's tasks (post-update episodes) is at least ``promote``, down when it
is below ``demote``, else it stays. Test tasks are never touched: evaluation is on the
family's held-out tasks at their own difficulty.

With ``focus`` > 0 the group with the lowest level (the first listed in
:attr:`~sim_envs.tasks.TaskFamily.difficulty_groups` on ties) gets that fraction of the
meta-batch: tasks of other groups, from the end of the batch, are replaced by training
tasks of that group drawn from their own seeded stream. legged_gym trains about half of its
robots on stairs; here the share follows whichever terrain lags.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from metarobot.training.config import CurriculumConfig
from sim_envs.tasks import Task, TaskFamily

#: Added to the batch's seed for the stream that ``focus`` draws its extra tasks from.
FOCUS_SEED_OFFSET = 2**40


class TerrainCurriculum:
    """Per-group difficulty levels, applied to training tasks and moved by their success.

    Args:
        family: a family with :attr:`~sim_envs.tasks.TaskFamily.has_difficulty`.
        config: start level, step and thresholds (:class:`CurriculumConfig`).

    ``levels`` holds the groups seen so far (the others are at ``config.start``); the
    trainer saves it in the checkpoint and sets it on resume.
    """

    def __init__(self, family: TaskFamily, config: CurriculumConfig) -> None:
        if not family.has_difficulty:
            raise ValueError(f"family {family.name!r} has no task difficulty for a curriculum")
        self.family, self.config = family, config
        self.levels: dict[str, float] = {}

    def level(self, group: str) -> float:
        return self.levels.get(group, self.config.start)

    def focus_group(self) -> str:
        """The group with the lowest level (the first listed on ties)."""
        return min(self.family.difficulty_groups, key=self.level)

    def apply(self, tasks: Sequence[Task], seed: int) -> tuple[list[Task], list[str | None]]:
        """Each task at its group's level, and each task's group (``None``: not levelled).

        ``seed`` is the batch's task seed; ``focus``'s extra tasks are drawn from
        ``seed + FOCUS_SEED_OFFSET``, so a batch is the same on every resume.
        """
        if self.config.focus > 0:
            tasks = self._focused(list(tasks), seed)
        groups = [self.family.difficulty_group(task) for task in tasks]
        out = [task if group is None else self.family.at_level(task, self.level(group))
               for task, group in zip(tasks, groups, strict=True)]
        return out, groups

    def _focused(self, tasks: list[Task], seed: int) -> list[Task]:
        group = self.focus_group()
        in_group = [self.family.difficulty_group(t) == group for t in tasks]
        missing = round(self.config.focus * len(tasks)) - sum(in_group)
        if missing <= 0:
            return tasks
        extra: list[Task] = []
        draw = 0
        while len(extra) < missing:  # about 1 in len(groups) + 1 draws is in the group
            pool = self.family.sample_tasks(8 * len(tasks), "train",
                                            seed=seed + FOCUS_SEED_OFFSET + draw)
            extra += [t for t in pool if self.family.difficulty_group(t) == group]
            draw += 1
        replace = [i for i in reversed(range(len(tasks))) if not in_group[i]][:missing]
        for i, task in zip(replace, extra, strict=False):
            tasks[i] = task
        return tasks

    def update(self, groups: Sequence[str | None], success: np.ndarray) -> None:
        """Move each group's level by the mean ``success`` ``[M]`` (one value per task, in
        [0, 1]) of its tasks in this batch; groups without tasks here keep theirs."""
        if len(groups) != len(success):
            raise ValueError(f"{len(groups)} groups for {len(success)} success values")
        cfg = self.config
        for group in sorted({g for g in groups if g is not None}):
            rate = float(np.mean([s for g, s in zip(groups, success, strict=True)
                                  if g == group]))
            level = self.level(group)
            if rate >= cfg.promote:
                level += cfg.step
            elif rate < cfg.demote:
                level -= cfg.step
            self.levels[group] = float(min(1.0, max(cfg.min_level, level)))

    def scalars(self) -> dict[str, float]:
        """The levels, for the run log (``curriculum/level_<group>``)."""
        return {f"curriculum/level_{g}": v for g, v in sorted(self.levels.items())}
