"""Figures for the leaderboard report. Each returns False when it has nothing to draw. A figure whose file was
drawn from the same inputs (bench.plots.figure_key) is kept, not drawn again."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix

from bench.data import attribute_names
from bench.plots import figure_current, figure_key, plt, save_figure


def _key(*inputs) -> str:
    return figure_key(__file__, *inputs)


def _save(fig, path: Path, key: str) -> bool:
    fig.tight_layout()
    save_figure(fig, path, key, dpi=80)
    return True


def pareto_front(cost: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Indices of points no other point beats on both lower cost and higher accuracy, by increasing cost."""
    order = np.lexsort((-acc, cost))
    front, best = [], -np.inf
    for i in order:
        if acc[i] > best:
            front.append(i)
            best = acc[i]
    return np.array(front, dtype=int)


def pareto(entries, path: Path, ylabel: str = "val overall accuracy", key: str = "overall_acc") -> bool:
    """Accuracy (`key`) against GFLOPs per image and training time, for entries scored on the same images (the
    caller draws one figure per set of scored images; `ylabel` names the metric and the images)."""
    pts = [(e.label, e.meta.get("gflops"), e.meta.get("train_time_s"), e.score[key]) for e in entries]
    pts = [p for p in pts if p[1] is not None and p[2] is not None]
    if not pts:
        return False
    if figure_current(path, key := _key("pareto", pts, ylabel)):
        return True
    labels = [p[0] for p in pts]
    acc = np.array([p[3] for p in pts])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, col, name in ((axes[0], 1, "GFLOPs per image"), (axes[1], 2, "training time (s)")):
        cost = np.array([p[col] for p in pts], float)
        ax.scatter(cost, acc)
        for x, y, t in zip(cost, acc, labels):
            ax.annotate(t, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        f = pareto_front(cost, acc)
        ax.plot(cost[f], acc[f], "r--", lw=1, label="Pareto front")
        ax.set_xscale("log") if cost.min() > 0 and cost.max() / cost.min() > 20 else None
        ax.set_xlabel(name), ax.set_ylabel(ylabel), ax.legend(fontsize=7)
    return _save(fig, path, key)


def curves(entries, path: Path) -> bool:
    with_hist = [e for e in entries if e.history is not None and len(e.history)]
    if not with_hist:
        return False
    if figure_current(path, key := _key("curves", [(e.label, e.history[["epoch", "overall_acc", "val_loss"]])
                                                   for e in with_hist])):
        return True
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for e in with_hist:
        h = e.history
        a.plot(h["epoch"], h["overall_acc"], label=e.label)
        b.plot(h["epoch"], h["val_loss"], label=e.label)
    a.set_xlabel("epoch"), a.set_ylabel("val overall accuracy"), a.legend(fontsize=7)
    b.set_xlabel("epoch"), b.set_ylabel("val loss"), b.legend(fontsize=7)
    return _save(fig, path, key)


def _attribute_grid(class_names, attributes, height: float):
    """One panel per attribute, three to a row, the unused panels of the last row hidden; and the panels' titles."""
    n = len(class_names)
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(13 if cols == 3 else 4.5 * cols, height * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()[:n], attribute_names([len(c) for c in class_names], attributes)


def class_distribution(counts, class_names, weights: dict, path: Path, attributes=None) -> bool:
    if figure_current(path, key := _key("class_distribution", counts, class_names, weights, attributes)):
        return True
    fig, axes, attributes = _attribute_grid(class_names, attributes, 3.25)
    for a, ax in enumerate(axes):
        x = np.arange(len(counts[a]))
        ax.bar(x, counts[a], color="#bbb")
        ax.set_yscale("log"), ax.set_ylim(0.8, max(counts[a]) * 1.5), ax.set_ylabel("train images")
        ax.set_xticks(x, class_names[a], rotation=45, ha="right", fontsize=7)
        ax.set_title(attributes[a])
        tw = ax.twinx()
        for scheme, w in weights.items():
            tw.plot(x, w[a], marker="o", ms=3, lw=1, label=scheme)
        tw.set_yscale("log"), tw.set_ylabel("class weight", fontsize=7)
        if a == 0:
            tw.legend(fontsize=6)
    return _save(fig, path, key)


def confusion(labels: np.ndarray, pred: np.ndarray, class_names, path: Path, title: str, attributes=None) -> bool:
    if figure_current(path, key := _key("confusion", labels, pred, class_names, title, attributes)):
        return True
    fig, axes, attributes = _attribute_grid(class_names, attributes, 4)
    for a, ax in enumerate(axes):
        k = len(class_names[a])
        cm = confusion_matrix(labels[:, a], pred[:, a], labels=np.arange(k))
        ax.imshow(cm, cmap="Blues")
        for i in range(k):
            for j in range(k):
                ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=6,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
        ax.set_xticks(range(k), class_names[a], rotation=45, ha="right", fontsize=6)
        ax.set_yticks(range(k), class_names[a], fontsize=6)
        ax.set_title(attributes[a], fontsize=9)
        ax.set_xlabel("predicted", fontsize=7), ax.set_ylabel("true", fontsize=7)
    fig.suptitle(title)
    return _save(fig, path, key)
