"""Folds stratified over all attributes at once (iterative multi-label stratification).

Used wherever labelled images are split into k folds: the ensembler's cross-validation over val (and k-fold
training over train + val). Plain KFold leaves rare classes (square neckline: 19 of 5000 images) to chance.
"""
from __future__ import annotations

import numpy as np


def stratified_folds(labels: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Fold id (0..k-1) per row: iterative stratification (Sechidis et al., ECML 2011) over every (attribute, class).

    The rarest label still unassigned goes first; each of its rows goes to the fold that most lacks that label
    (then the one lacking most of the row's other labels, then rows, then at random); a last pass puts every class
    with >= k rows into every fold and evens fold sizes to within one row where possible. Rare classes so end up
    in all folds, which plain KFold leaves to chance.
    """
    labels = np.asarray(labels, np.int64).reshape(len(labels), -1)
    n = len(labels)
    # (N, attributes) global label ids, distinct per row; a missing label (-1) gets one id of its own per attribute,
    # never stratified on (its count stays 0)
    ids = labels + 1 + np.cumsum([0, *(labels.max(0) + 2)])[:-1]
    missing = labels < 0
    remaining = np.bincount(ids.ravel())
    remaining[ids[missing]] = 0
    want = np.tile(remaining / k, (k, 1))  # rows each fold still lacks per label
    size = np.full(k, n / k)  # rows each fold still lacks
    fold = np.full(n, -1)
    rng = np.random.default_rng(seed)
    while (fold < 0).any():
        left = np.where(remaining > 0, remaining, np.iinfo(np.int64).max)
        lab = rng.choice(np.flatnonzero(left == left.min()))
        for r in rng.permutation(np.flatnonzero((fold < 0) & (ids == lab).any(1))):
            best = np.flatnonzero(want[:, lab] == want[:, lab].max())
            lack = (want[np.ix_(best, ids[r])] > 0).sum(1)  # prefer folds that also lack the row's other labels
            best = best[lack == lack.max()]
            best = best[size[best] == size[best].max()]
            f = best[0] if len(best) == 1 else rng.choice(best)
            fold[r] = f
            want[f, ids[r]] -= 1
            size[f] -= 1
            remaining[ids[r]] -= 1
    return _repair(fold, ids, k, np.unique(ids[missing]))


def _repair(fold: np.ndarray, ids: np.ndarray, k: int, unlabelled=()) -> np.ndarray:
    """What the greedy pass can leave: a label with >= k rows missing from a fold (fixed by swapping rows between
    folds where a swap empties no other such label), and fold sizes apart by more than one (fixed by moving rows
    from the largest fold to the smallest, preferring rows whose labels the largest has most surplus of). The ids in
    `unlabelled` (missing labels) are never needed."""
    total = np.bincount(ids.ravel())
    needed = total >= k
    needed[np.asarray(unlabelled, np.int64)] = False
    cnt = np.zeros((k, len(total)), int)
    np.add.at(cnt, (fold[:, None], ids), 1)

    def move(row, src, dst):
        fold[row] = dst
        cnt[src, ids[row]] -= 1  # a row's ids are distinct, so plain fancy indexing is enough
        cnt[dst, ids[row]] += 1

    for f, lab in zip(*np.nonzero((cnt == 0) & needed)):
        if cnt[f, lab]:  # an earlier swap filled it
            continue
        for r, s in ((r, s) for r in np.flatnonzero((ids == lab).any(1) & (cnt[fold, lab] > 1))
                     for s in np.flatnonzero(fold == f)):
            g, before = fold[r], cnt[[f, fold[r]]] > 0
            move(r, g, f)
            move(s, f, g)
            if not (before & (cnt[[f, g]] == 0) & needed).any():
                break
            move(s, g, f)  # undo: this swap would empty another needed label
            move(r, f, g)
    while (sizes := np.bincount(fold, minlength=k)).max() - sizes.min() > 1:
        g, f = sizes.argmax(), sizes.argmin()
        rows = np.flatnonzero(fold == g)
        ok = ~((cnt[g][ids[rows]] == 1) & needed[ids[rows]]).any(1)  # leaves every needed label in g
        if not ok.any():
            break
        move(rows[ok][(cnt[g] - cnt[f])[ids[rows[ok]]].sum(1).argmax()], g, f)
    return fold
