"""How much the k-fold logit-adjustment prior (pool counts vs the other folds' counts) and the k-fold
majority baseline (pool vs per fold) change out-of-fold scores, on one k-fold member's probabilities
(reports/reference/kfold.md).

    python scripts/kfold_prior.py RUNS/<run>/<model>/probs_val.npz
"""
import json
import sys
from pathlib import Path

import numpy as np

from bench.data import class_counts
from bench.ensembling.decisions import decide, fit_rule, prior_from_counts
from bench.metrics import majority_from_counts, score

z = np.load(sys.argv[1])
labels, fold = z["labels"], z["fold"]
nc = tuple(json.loads((Path(sys.argv[1]).parent / "run.json").read_text())["num_classes"])
for view in ("plain", "tta"):
    p = z["plain"] if view == "plain" else (z["plain"] + z["flip"]) / 2
    pool_prior = prior_from_counts(class_counts(labels, nc))
    out = {"pool": np.empty_like(labels), "fold": np.empty_like(labels)}
    for f in np.unique(fold):
        te, tr = fold == f, fold != f
        for how, pi in (("pool", pool_prior), ("fold", prior_from_counts(class_counts(labels[tr], nc)))):
            params = fit_rule("logit_adjusted", p[tr], labels[tr], nc, pi, "class")
            out[how][te] = decide("logit_adjusted", p[te], nc, pi, params)
    s = {k: score(labels, v, nc) for k, v in out.items()}
    print(f"{view}: logit-adjusted OOF class-average pool prior {s['pool']['class_avg_acc']:.4f} vs per-fold prior "
          f"{s['fold']['class_avg_acc']:.4f}; overall {s['pool']['overall_acc']:.4f} vs {s['fold']['overall_acc']:.4f};"
          f" predictions that differ: {(out['pool'] != out['fold']).any(1).sum()} images of {len(labels)}")
pool_pred = majority_from_counts(class_counts(labels, nc), len(labels))
per_fold = np.empty_like(labels)
for f in np.unique(fold):
    per_fold[fold == f] = majority_from_counts(class_counts(labels[fold != f], nc), int((fold == f).sum()))
a, b = score(labels, pool_pred, nc), score(labels, per_fold, nc)
print(f"majority baseline: pool counts overall {a['overall_acc']:.4f} class-average {a['class_avg_acc']:.4f}; per fold "
      f"{b['overall_acc']:.4f} / {b['class_avg_acc']:.4f}; predictions that differ: {(pool_pred != per_fold).sum()}")
