"""Run logging: TensorBoard scalars, a JSONL log, a progress bar and one line per iteration."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

#: Scalars shown in the one-line summary, with their short labels.
SUMMARY_KEYS = (("return/pre", "R_pre"), ("return/post", "R_post"), ("success/pre", "S_pre"),
                ("success/post", "S_post"), ("outer/kl", "KL"), ("time/iteration", "s/it"))


class RunLogger:
    """Writes every iteration's scalars to TensorBoard (``run_dir/tb``) and ``log.jsonl``.

    Args:
        run_dir: the run directory.
        total_iterations: for the progress bar's ETA.
        start_iteration: first iteration of this (possibly resumed) process.
        progress: show a tqdm progress bar (on stderr).
    """

    def __init__(self, run_dir: Path, total_iterations: int, start_iteration: int = 0,
                 progress: bool = True) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.writer = SummaryWriter(str(self.run_dir / "tb"))
        self.torn_record_dropped = drop_torn_record(self.run_dir / "log.jsonl")
        self.jsonl = (self.run_dir / "log.jsonl").open("a")
        self.bar = tqdm(total=total_iterations, initial=start_iteration, unit="it",
                        desc="meta-train", disable=not progress, file=sys.stderr,
                        dynamic_ncols=True)
        if self.torn_record_dropped:
            self.event("dropped the torn last record of log.jsonl (a write cut by a kill)")

    def log(self, iteration: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, iteration)
        self.writer.flush()
        self._write({"iteration": iteration, "time": time.time(), **scalars})
        summary = " ".join(f"{label}={scalars[key]:.3g}" for key, label in SUMMARY_KEYS
                           if key in scalars)
        self.bar.update(1)
        self.bar.write(f"[it {iteration:4d}] {summary}")

    def event(self, message: str, **fields: Any) -> None:
        """A notable event (worker restart, skipped update, checkpoint, interrupt)."""
        self._write({"event": message, "time": time.time(), **fields})
        self.bar.write(f"[metarobot] {message}")

    def _write(self, record: dict[str, Any]) -> None:
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        self.bar.close()
        self.writer.close()
        self.jsonl.close()


def drop_torn_record(path: Path) -> bool:
    """Cut a last line without its newline (a record whose write a kill interrupted) off
    the log at ``path``, so that appended records start on a line of their own. Returns
    whether there was one."""
    if not path.is_file():
        return False
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    with path.open("r+b") as f:
        f.truncate(data.rfind(b"\n") + 1)
    return True


def read_log(run_dir: str | Path) -> dict[int, dict[str, Any]]:
    """The iteration records of ``run_dir/log.jsonl``, by iteration, in order.

    Event records are left out; of an iteration logged twice (redone after an
    interruption and a resume) the last record is kept. A last line without its newline
    (being written, or torn by a kill) is left out; any other line that is not a JSON
    record raises ``ValueError`` naming the file and line. A missing log gives ``{}``.
    """
    path = Path(run_dir) / "log.jsonl"
    rows: dict[int, dict[str, Any]] = {}
    if path.exists():
        lines = path.read_text().split("\n")[:-1]  # the part after the last newline: torn
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number} is not a JSON record: {err}") from None
            if "iteration" in record and "event" not in record:
                rows[int(record["iteration"])] = record
    return dict(sorted(rows.items()))
