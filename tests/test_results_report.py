"""The results report (bench/report.py) regenerated from the committed reach JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench import per_task, results
from bench.report import GENERATED_MARKER, README_MARKERS, write_report
from bench.stats import paired_gain
from metarobot.training.evaluate import mean_ci95

REPO = Path(__file__).resolve().parents[1]

REACH_SEED0 = REPO / "bench" / "results" / "meta" / "reach" / "seed0"


def test_report_from_committed_json_keeps_intro_and_places_family_notes(tmp_path):
    out = tmp_path / "meta"
    shutil.copytree(REACH_SEED0, out / "reach" / "seed0")
    (out / "reach" / "notes.md").write_text("Hand-written finding: tried X.\n")
    report = tmp_path / "results.md"
    report.write_text("# My intro\n\nkept\n\n" + GENERATED_MARKER + "\nold body\n")

    write_report(out, report)

    text = report.read_text()
    assert text.startswith("# My intro\n\nkept\n")
    assert "old body" not in text
    reach = text.split("## reach")[1].split("\n## ")[0]
    assert reach.lstrip().startswith("Hand-written finding: tried X.")
    assert "**Target (meta after 1 step > baseline (a) after 1 step, CIs apart): MET.**" in reach
    # One seed meets the target, but the status does not call the family done on it.
    assert "| reach | 0 | 120 | met (on 1 seed(s); 3 needed) |" in text
    # Families without JSON say how to produce them.
    grasp = text.split("## grasp")[1].split("\n## ")[0]
    assert "No results yet" in grasp


def test_headline_compares_at_the_last_iteration_with_a_baseline(tmp_path):
    import json

    out = tmp_path / "meta"
    seed_dir = out / "reach" / "seed0"
    # Only iteration 60's results (meta and baseline (a)), whatever else is committed.
    shutil.copytree(REACH_SEED0, seed_dir, ignore=lambda _, names: [
        n for n in names if n.endswith(".json") and "_it00060" not in n])
    # Meta-training evaluated further, baseline (a) not (yet) at that iteration.
    later = json.loads((seed_dir / "meta_it00060.json").read_text())
    later["iteration"] = 90
    (seed_dir / "meta_it00090.json").write_text(json.dumps(later))
    report = tmp_path / "results.md"

    write_report(out, report)

    reach = report.read_text().split("## reach")[1].split("\n## ")[0]
    assert "### After meta-training: iteration 60 " in reach
    assert "also evaluated at iteration(s) 90, without baseline (a)" in reach
    assert "| 90 |" in reach  # in the table against env steps


def test_paired_adaptation_gain_is_per_task_for_one_seed_and_over_seed_means_for_several():
    returns = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 3.0]])  # [K+1, tasks]
    one = {"meta": {10: {"evaluation": {"returns": returns.tolist()}}}}
    mean, ci = paired_gain([one], 10, 1)
    assert mean == pytest.approx(1.0)  # gains 1, 2, 0 per task
    assert ci == pytest.approx(mean_ci95(np.array([1.0, 2.0, 0.0]))[1])
    other = {"meta": {10: {"evaluation": {"returns": (returns + [[0.0], [3.0]]).tolist()}}}}
    mean, _ = paired_gain([one, other], 10, 1)
    assert mean == pytest.approx(2.5)  # the seeds' mean gains are 1 and 4
    assert paired_gain([one], 10, 3) is None  # not adapted that far
    assert paired_gain([one], 20, 1) is None  # no such iteration


def test_target_is_judged_on_the_seeds_that_have_baseline_a(tmp_path):
    out = tmp_path / "meta"
    shutil.copytree(REACH_SEED0, out / "reach" / "seed0")
    # Seed 1: meta-training results only (its baseline (a) still to run).
    shutil.copytree(REACH_SEED0, out / "reach" / "seed1",
                    ignore=lambda _, names: [n for n in names if n.startswith("baseline")])
    report = tmp_path / "results.md"

    write_report(out, report)

    text = report.read_text()
    reach = text.split("## reach")[1].split("\n## ")[0]
    assert "for seed(s) 0 only: the target below is judged on those seeds" in reach
    assert "Return CIs apart over tasks: yes" in reach  # seed 0 alone, not "2 seeds"
    assert "| reach | 0, 1 | 120 | met (on 1 seed(s); 3 needed) |" in text


def test_target_met_over_seed_means_but_not_in_every_seed_says_so(tmp_path):
    import json

    out = tmp_path / "meta"
    for seed in (0, 1, 2):
        shutil.copytree(REACH_SEED0.parent / f"seed{seed}", out / "reach" / f"seed{seed}",
                        ignore=lambda _, names: [n for n in names if "_it00120" not in n])
    # Seed 0's tasks made far more different from each other, for both methods alike: the
    # seed's means and the paired differences stay, its intervals over tasks widen.
    for kind, key in (("meta", "evaluation"), ("baseline", None)):
        path = out / "reach" / "seed0" / f"{kind}_it00120.json"
        data = json.loads(path.read_text())
        block = data[key] if key else data
        spread = 200.0 * (np.arange(len(block["task_ids"])) % 2 * 2 - 1)  # -200, +200, ...
        block["returns"] = (np.asarray(block["returns"]) + spread).tolist()
        path.write_text(json.dumps(data))
    report = tmp_path / "results.md"

    write_report(out, report)

    text = report.read_text()
    assert "Return CIs apart over 3 seeds' task means: yes; per seed (CI over tasks): 2/3" in text
    assert "| reach | 0, 1, 2 | 120 | met over the seeds' means, in 2 of 3 seeds alone |" in text


def test_readme_results_table_is_regenerated_between_its_markers(tmp_path):
    out = tmp_path / "meta"
    shutil.copytree(REACH_SEED0, out / "reach" / "seed0")
    readme = tmp_path / "README.md"
    begin, end = README_MARKERS
    readme.write_text(f"# Title\n\nintro\n\n{begin}\nstale table\n{end}\n\nafter\n")

    write_report(out, tmp_path / "results.md", readme)

    text = readme.read_text()
    assert text.startswith("# Title\n\nintro\n\n") and text.endswith(f"{end}\n\nafter\n")
    assert "stale table" not in text
    rows = [line for line in text.splitlines() if line.startswith("| reach")]
    assert len(rows) == 1 and "| `quickstart` | 0 | 1.2M |" in rows[0]
    assert rows[0].endswith("| met (on 1 seed(s); 3 needed) |")
    assert "| grasp" not in text  # no results, no row

    readme.write_text("# A README without the markers\n")
    with pytest.raises(ValueError, match="markers"):
        write_report(out, tmp_path / "results.md", readme)
    assert readme.read_text() == "# A README without the markers\n"  # left as it was


def test_per_task_table_lines_up_tasks_returns_and_a_measured_zero_action_reference(tmp_path):
    import json

    seed_dir = tmp_path / "reach" / "seed0"
    seed_dir.mkdir(parents=True)
    for kind in ("meta", "baseline"):
        shutil.copy(REACH_SEED0 / f"{kind}_it00060.json", seed_dir)
    meta = json.loads((seed_dir / "meta_it00060.json").read_text())

    per_task.main(["--family", "reach", "--seed", "0", "--iteration", "60",
                   "--out", str(tmp_path), "--reference-episodes", "1"])

    data = json.loads((seed_dir / "per_task_it00060.json").read_text())
    rows = data["tasks"]
    assert [r["task_id"] for r in rows] == meta["evaluation"]["task_ids"]
    assert [r["meta_return"][1] for r in rows] == [x for x in meta["evaluation"]["returns"][1]]
    reference = np.array([r["zero_action_return"] for r in rows])
    # Reach pays minus the distance to the goal every step: holding still costs something
    # on every task, and different goals cost different amounts.
    assert np.all(reference < 0) and reference.std() > 0
    table = (seed_dir / "per_task_it00060.md").read_text()
    assert table.count("\n| ") == 1 + len(rows)  # header and one line per task
    assert "above baseline (a) after 1 step on" in table

    # Results whose tasks are not the family's test tasks are refused, naming the file.
    meta["evaluation"]["task_ids"][0] = "reach-test-000000000000"
    (seed_dir / "meta_it00060.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit, match="meta_it00060.json"):
        per_task.main(["--family", "reach", "--seed", "0", "--iteration", "60",
                       "--out", str(tmp_path)])


def test_a_later_stage_continues_from_the_latest_saved_stage_not_only_those_asked_for(tmp_path):
    folder = tmp_path / "baseline_multitask"
    for iteration, saved in [(50, True), (100, True), (120, False), (200, True)]:
        (folder / results.stage_name(iteration)).mkdir(parents=True)
        if saved:
            (folder / results.stage_name(iteration) / "model.zip").write_bytes(b"zip")
    # stage 120 has no model (an interrupted save): 150 continues from 100
    assert results.latest_saved_stage(folder, "model.zip", 150) == 100
    assert results.latest_saved_stage(folder, "model.zip", 100) == 50
    assert results.latest_saved_stage(folder, "model.zip", 50) is None
    assert results.latest_saved_stage(tmp_path / "missing", "model.zip", 150) is None


def test_a_lost_run_dir_continues_from_the_latest_saved_stage_beside_the_results(tmp_path):
    seed_out, run_dir = tmp_path / "meta" / "walk" / "seed0", tmp_path / "runs" / "seed0"
    for iteration in (40, 100):
        saved = results.saved_dir(seed_out, "meta", iteration) / results.CHECKPOINT_NAME
        saved.parent.mkdir(parents=True)
        saved.write_bytes(f"checkpoint {iteration}".encode())
    # training to 150 with no run directory starts from the saved stage 100, not scratch
    results.restore_run_dir(run_dir, seed_out, 150)
    assert (run_dir / results.CHECKPOINT_NAME).read_bytes() == b"checkpoint 100"
    # a run directory that has a checkpoint is never overwritten
    (run_dir / results.CHECKPOINT_NAME).write_bytes(b"newer")
    results.restore_run_dir(run_dir, seed_out, 150)
    assert (run_dir / results.CHECKPOINT_NAME).read_bytes() == b"newer"
    # nothing saved below the target: nothing to restore
    fresh = tmp_path / "runs" / "seed1"
    results.restore_run_dir(fresh, seed_out, 40)
    assert not (fresh / results.CHECKPOINT_NAME).exists()


def test_learners_table_reads_each_learner_and_the_baseline(tmp_path):
    from bench import learners

    meta = tmp_path / "meta"
    shutil.copytree(REACH_SEED0, meta / "reach" / "seed0")
    other = tmp_path / "meta_es"
    shutil.copytree(REACH_SEED0, other / "reach" / "seed0")
    stage = 60
    # The second learner's returns shifted by +5: the table must show exactly that.
    path = other / "reach" / "seed0" / f"meta_it{stage:05d}.json"
    record = json.loads(path.read_text())
    record["evaluation"]["returns"] = (np.asarray(record["evaluation"]["returns"]) + 5).tolist()
    path.write_text(json.dumps(record))

    learners.main(["--family", "reach", "--seeds", "0", "--out", str(tmp_path / "out"),
                   "--learner", f"A={meta}:{stage}", "--learner", f"B={other}:{stage}",
                   "--baseline", "A"])

    rows = json.loads((tmp_path / "out" / "reach.json").read_text())["rows"]
    assert [r["learner"] for r in rows] == ["A", "multi-task PPO", "B"]
    a, base, b = rows
    for k in range(4):
        assert b["return"][k][0] == pytest.approx(a["return"][k][0] + 5)
        assert b["return"][k][1] == pytest.approx(a["return"][k][1])
    assert base["env_steps"] > 0 and a["env_steps"] == 600_000
    assert (tmp_path / "out" / "reach.png").stat().st_size > 0
    assert "| B | 1 | 600,000 |" in (tmp_path / "out" / "reach.md").read_text()
    with pytest.raises(SystemExit, match="no results"):
        learners.main(["--family", "reach", "--seeds", "0", "--out", str(tmp_path / "x"),
                       "--learner", f"C={tmp_path / 'missing'}:{stage}"])


def test_curriculum_levels_go_from_the_run_log_to_the_stage_json_and_a_plot(tmp_path):
    from bench.report import plot_levels
    from metarobot.training.runlog import read_log

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    records = [{"iteration": 1, "curriculum/level_stairs": 0.2, "curriculum/level_rough": 0.3},
               {"event": "checkpoint"},
               {"iteration": 2, "curriculum/level_stairs": 0.1},
               {"iteration": 3, "curriculum/level_stairs": 0.2, "curriculum/level_rough": 0.4}]
    (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    log = read_log(run_dir)
    later = results.curriculum_levels(log, 2, 3)
    assert later == {"iteration": [2, 3],
                     "levels": {"rough": [None, 0.4], "stairs": [0.1, 0.2]}}
    assert results.curriculum_levels(log, 4, 9) is None
    earlier = results.curriculum_levels(log, 1, 1)
    entry = {"meta": {1: {"curriculum_levels": earlier}, 3: {"curriculum_levels": later}}}
    assert plot_levels(entry, "levels", tmp_path / "levels.png")
    assert (tmp_path / "levels.png").stat().st_size > 0
    assert not plot_levels({"meta": {1: {}}}, "none", tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_per_task_groups_summarise_each_value_of_a_few_valued_parameter():
    from bench.per_task import MAX_GROUPS, group_lines

    rows = [{"params": {"heading": h, "speed": 0.1 * i},
             "meta_return": [0.0, r, r + 1], "meta_success": [0.0, s, 1.0]}
            for i, (h, r, s) in enumerate([(0.0, 10.0, 1.0), (0.0, 20.0, 0.0),
                                           (3.14, -5.0, 0.0)])]
    lines = group_lines(rows, "heading")
    assert lines == [
        "- heading 0.00 (2 tasks): meta success 0.00 before, 0.50 after 1 step, 1.00 after "
        f"2; return after 1 step 15.0 ± {mean_ci95(np.array([10.0, 20.0]))[1]:.1f}.",
        "- heading 3.14 (1 tasks): meta success 0.00 before, 0.00 after 1 step, 1.00 after "
        f"2; return after 1 step -5.0 ± {mean_ci95(np.array([-5.0]))[1]:.1f}."]
    many = [dict(rows[0], params={"heading": float(i)}) for i in range(MAX_GROUPS + 1)]
    assert group_lines(many, "heading") == []


def test_walk_is_judged_on_its_success_target_without_baseline_a(tmp_path):
    """Walk's target is absolute (success after one step >= 0.5): judged from the meta
    JSON alone, met or not, and the README table gets a walk row."""
    import json

    walk = REPO / "bench" / "results" / "meta" / "walk"
    for seed in (0, 1, 2):
        shutil.copytree(walk / f"seed{seed}", tmp_path / "met" / "walk" / f"seed{seed}",
                        ignore=lambda _, names: [n for n in names if n == "saved"])
    report = tmp_path / "met.md"
    write_report(tmp_path / "met", report)
    text = report.read_text()
    status = [line for line in text.splitlines() if line.startswith("| walk |")][0]
    assert "| met: success after 1 step" in status and "baseline (a) not run" in status
    assert "**Target (success after 1 step >= 0.5, mean over 3 seeds' task means): MET**" in text
    # The same JSON with success after one step halved misses it.
    seed_dir = tmp_path / "missed" / "walk" / "seed0"
    shutil.copytree(walk / "seed0", seed_dir, ignore=lambda _, names: [
        n for n in names if n == "saved" or (n.endswith(".json") and "_it00040" not in n)])
    path = seed_dir / "meta_it00040.json"
    data = json.loads(path.read_text())
    success = np.asarray(data["evaluation"]["success"])
    success[1] = success[1] * 0.5
    data["evaluation"]["success"] = success.tolist()
    path.write_text(json.dumps(data))
    report = tmp_path / "missed.md"
    write_report(tmp_path / "missed", report)
    assert "): NOT MET** (0.41)" in report.read_text()
