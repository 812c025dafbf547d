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


def _write(fig, path: Path, key: str, rect=(0, 0, 1, 1)) -> bool:
    """Lay the figure out inside `rect` (figure fractions; the rest is left for a figure legend) and save it."""
    fig.tight_layout(rect=rect)
    save_figure(fig, path, key, dpi=80)
    return True


def _save(fig, path: Path, key: str) -> bool:
    return _write(fig, path, key)


def _label_points(ax, xs, ys, labels, fontsize: int = 8) -> None:
    """Name each point beside it, on the side that keeps the name inside the frame: left of points in the right
    half of the axes, below points near the top (the caller has set the limits)."""
    ax.autoscale_view()
    to_axes = ax.transAxes.inverted()
    for x, y, text in zip(xs, ys, labels):
        fx, fy = to_axes.transform(ax.transData.transform((x, y)))
        right, top = fx > 0.5, fy > 0.85
        ax.annotate(text, (x, y), fontsize=fontsize, xytext=(-5 if right else 5, -5 if top else 4),
                    textcoords="offset points", ha="right" if right else "left", va="top" if top else "bottom")


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
        ax.scatter(cost, acc, zorder=3)
        f = pareto_front(cost, acc)
        ax.plot(cost[f], acc[f], "r--", lw=1, label="Pareto front")
        ax.set_xscale("log") if cost.min() > 0 and cost.max() / cost.min() > 20 else None
        ax.margins(x=0.08, y=0.12)
        _label_points(ax, cost, acc, labels)
        ax.set_xlabel(name), ax.set_ylabel(ylabel), ax.legend(fontsize=8, loc="lower right")
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
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    fig, axes, attributes = _attribute_grid(class_names, attributes, 3.25)
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.5, 1, 10 rather than 5 x 10^-1
    handles = []
    for a, ax in enumerate(axes):
        x = np.arange(len(counts[a]))
        bars = ax.bar(x, counts[a], color="#bbb", label="train images (bars, left axis)")
        ax.set_yscale("log"), ax.set_ylim(0.8, max(counts[a]) * 1.5), ax.set_ylabel("train images", fontsize=9)
        ax.yaxis.set_major_formatter(plain)
        ax.set_xticks(x, class_names[a], rotation=45, ha="right", fontsize=8)
        ax.set_title(attributes[a], fontsize=11)
        tw = ax.twinx()
        lines = [tw.plot(x, w[a], marker="o", ms=4, lw=1.2, label=f"weight: {scheme}")[0]
                 for scheme, w in weights.items()]
        tw.set_yscale("log"), tw.set_ylabel("class weight", fontsize=9)
        tw.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))  # a few labelled ticks, not every minor one
        tw.yaxis.set_major_formatter(plain), tw.yaxis.set_minor_formatter(NullFormatter())
        tw.tick_params(labelsize=8)
        handles = handles or [bars, *lines]
    # one legend for every panel, above them: it sits on no bar and is read once
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=9, frameon=False)
    return _write(fig, path, key, rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))


CONFUSION_FONT = 9  # points: counts and class names of a confusion matrix of up to 8 classes


def confusion(labels: np.ndarray, pred: np.ndarray, class_names, path: Path, title: str, attributes=None) -> bool:
    if figure_current(path, key := _key("confusion", labels, pred, class_names, title, attributes)):
        return True
    fig, axes, attributes = _attribute_grid(class_names, attributes, 4)
    for a, ax in enumerate(axes):
        k = len(class_names[a])
        cm = confusion_matrix(labels[:, a], pred[:, a], labels=np.arange(k))
        ax.imshow(cm, cmap="Blues")
        size = CONFUSION_FONT if k <= 8 else max(6, CONFUSION_FONT - (k - 8) // 2)  # many classes: smaller cells
        for i in range(k):
            for j in range(k):
                ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=size,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
        ax.set_xticks(range(k), class_names[a], rotation=45, ha="right", fontsize=size)
        ax.set_yticks(range(k), class_names[a], fontsize=size)
        ax.set_title(attributes[a], fontsize=12)
        ax.set_xlabel("predicted", fontsize=10), ax.set_ylabel("true", fontsize=10)
    fig.suptitle(title, fontsize=13)
    return _save(fig, path, key)
