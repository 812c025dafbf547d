"""scripts/distill_table.py compares like with like: every entry at the same views, decided by
bench/reporting/predictions.py as for the leaderboard. It set a teacher at plain + flip views (`:pred`) against a
baseline and students scored on the plain view (`:plain`)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.artifacts import save_probs, write_json

SCRIPT = Path(__file__).resolve().parents[1] / "scripts/distill_table.py"
K = (7, 3, 3, 4, 6, 3)


def soft(pred, w):
    """Probabilities with weight w on `pred`'s class and the rest spread evenly, per attribute."""
    return np.concatenate([w * np.eye(k)[pred[:, a]] + (1 - w) / k for a, k in enumerate(K)], 1)


def wrong(labels, rows, a=0):
    out = labels.copy()
    out[rows, a] = (labels[rows, a] + 1) % K[a]
    return out


def model(runs, label, plain, flip, labels):
    d = runs / label
    d.mkdir(parents=True)
    save_probs(d / "probs_val.npz", plain=plain, flip=flip, labels=labels)
    write_json({"kind": "model", "status": "done", "num_classes": list(K)}, d / "run.json")
    return d


def table_rows(out: str, title: str) -> dict[tuple[str, str], list[str]]:
    """The comparison rows (entry, metric) -> cells of the table under the heading that starts with `title`."""
    part = out.split(f"## {title}")[1].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in part.splitlines()
            if line.startswith("| ") and line.count("|") == 6 and not line.startswith("| entry")]
    return {(r[0], r[1]): r[2:] for r in rows}


def test_the_teacher_meets_the_students_and_the_baseline_at_the_same_views(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.stack([rng.integers(0, k, 40) for k in K], 1)
    runs = tmp_path / "runs"
    # the baseline: wrong on 20 images' texture on the plain view; its flip view is right, and outweighs it
    base = model(runs, "r/alone", soft(wrong(labels, slice(0, 20)), 0.6), soft(labels, 1.0), labels)
    # the student: wrong on 10 images' texture in both views
    student = model(runs, "r/student", soft(wrong(labels, slice(0, 10)), 0.6), soft(wrong(labels, slice(0, 10)), 0.6),
                    labels)
    # the teacher, an ensemble at plain + flip: right everywhere at its views, wrong on 2 cells on the plain view
    teacher = runs / "_ensembles/kd"
    teacher.mkdir(parents=True)
    save_probs(teacher / "probs_val.npz", plain=soft(labels, 1.0), pred=labels,
               pred_plain=wrong(labels, [38, 39], 1), labels=labels)
    write_json({"kind": "ensemble", "status": "done", "num_classes": list(K), "views": ["plain", "flip"],
                "members": ["r/alone"]}, teacher / "run.json")
    run = subprocess.run([sys.executable, str(SCRIPT), "--baseline", f"alone={base}", "--teacher", f"kd={teacher}",
                          "--entry", f"student={student}"], capture_output=True, text=True, check=True)
    plain, declared = table_rows(run.stdout, "plain view"), table_rows(run.stdout, "declared views")
    cells = 40 * len(K)
    # plain view: the teacher's pred_plain (2 cells wrong) against the baseline's plain argmax (20 wrong): +18 cells
    assert plain["kd", "overall"][0].startswith(f"{18 / cells:+.4f} ") and plain["kd", "overall"][2] == "100%"
    assert plain["student", "overall"][0].startswith(f"{10 / cells:+.4f} ")
    assert plain["student", "overall"][2] == f"{10 / 18:.0%}"  # 10 of the teacher's 18 cells
    # declared views: the teacher's pred (all right) against the baseline's plain + flip (all right): no gain
    assert declared["kd", "overall"][0].startswith("+0.0000 ")
    assert declared["kd", "overall"][2] == "- (the teacher is not above the baseline: no gain to keep)"
    assert declared["student", "overall"][0].startswith(f"{-10 / cells:+.4f} ")
    assert declared["student", "overall"][2] == "-"


def test_the_old_kind_suffix_is_refused_with_the_reason(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--baseline", "a=runs/x:plain", "--teacher", "t=runs/y:pred"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "NAME=DIR:KIND is gone" in run.stderr and run.stdout == ""


@pytest.mark.parametrize("spec", ["a", "a=", "=dir"])
def test_a_spec_without_name_and_folder_is_refused(tmp_path, spec):
    run = subprocess.run([sys.executable, str(SCRIPT), "--baseline", spec, "--teacher", f"t={tmp_path}"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "expected NAME=DIR" in run.stderr
