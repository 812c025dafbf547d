"""Consistent views without a GPU: the teacher labels V fixed augmented views of every training image once, and the
student trains on exactly those views (bench.distill --mode views).

Function matching (Beyer et al., CVPR 2022) needs the teacher's target for the very image the student sees. The
`online` mode runs every member on each augmented batch (a GPU's job); the `cached` mode labels the whole image and
mirror only, so a crop down to 35% of the image gets the whole image's target. Here, once per student:
- V views of each training image are drawn from a recorded seed (per view v, bench/training/augment.py
  `draw_params` on a generator seeded by (seed, v): crop box, rotation, flip, colour jitter, with the recipe's
  settings, exactly as the trainer draws them) and, with mixup (`alpha` > 0), a partner image (never itself) and
  lam ~ Beta(alpha, alpha) per image and view (numpy, seeded by (seed, v, 1)); all stored;
- the teacher labels each view: the view is made by `render` (apply_params on the student's own decoded training
  images, mixed with the partner's view of the same v), in batches of the student's batch size, and every member
  runs on it as in the online mode (teacher.OnlineTeacher: a cross-fitted member's out-of-fold network for each
  row); the combined probabilities are stored as float16;
- the student's epoch e trains on view e mod V: its batch is made by the same `render` from the same stored
  parameters, and its targets are the stored probabilities of those rows in that view (and, with mixup, its label
  term is the mixup loss of the two labels: kd.mixed_per_attribute).
Every view of an image depends on its own row of parameters alone and both passes render batches of the same shape,
so the student sees bit for bit the pixels the teacher labelled (tests/test_distill_views.py).

Cost: V teacher passes over the training images, once; then training costs what a cached student costs. The file
(`teacher_views.npz` in the student's run folder, keyed to the teacher, the images, the augmentation settings, the
size, the batch size, V, the seed and alpha) holds the parameters (about 40 bytes per image and view) and the
probabilities (2 bytes per class): about 3 MB for 4000 images, 26 classes and 8 views. A resumed run reuses it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.artifacts import load_npz, save_probs
from bench.training.augment import AugParams, apply_params, draw_params, mix

VIEWS_FILE = "teacher_views.npz"
AUG_FIELDS = ("crop_scale", "hflip", "rotate", "jitter", "crop_ratio", "crop_sampling", "crop_antialias")


@dataclass
class Views:
    """V stored views of N training images: their augmentation parameters, mixup partners and lam (None without
    mixup), and the teacher's probabilities (V, N, sum classes) once labelled."""
    params: list[AugParams]
    partner: torch.Tensor | None = None   # (V, N) int64
    lam: torch.Tensor | None = None       # (V, N) float32
    probs: torch.Tensor | None = None     # (V, N, C) float16

    @property
    def count(self) -> int:
        return len(self.params)

    def render(self, images: torch.Tensor, idx: torch.Tensor, view: int, source) -> tuple[torch.Tensor, torch.Tensor]:
        """View `view` of training rows `idx` (`images`: those rows, uint8, gathered from `source`, the training
        split's images; partners are gathered from it too): (float pixels, which images were mirrored)."""
        x, mirror = apply_params(images, self.params[view].rows(idx))
        if self.partner is not None:
            j = self.partner[view][idx.to(self.partner.device)]
            other, _ = apply_params(source[j], self.params[view].rows(j))
            x = mix(x, other, self.lam[view][idx.to(self.lam.device)].to(x.device))
        return x, mirror

    def to(self, device) -> "Views":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Views([p.to(device) for p in self.params], move(self.partner), move(self.lam), move(self.probs))


def draw_views(n: int, side: int, recipe, size: int, count: int, seed: int, alpha: float | None) -> Views:
    """`count` views of `n` images decoded at `side`, out at `size`, with the recipe's augmentation settings; view v
    from generators seeded by (seed, v) alone (so the first views of a larger V are the same views)."""
    if count < 1:
        raise ValueError(f"--views {count}: must be at least 1")
    params, partners, lams = [], [], []
    for v in range(count):
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, v]).generate_state(1)[0]))
        params.append(draw_params(n, side, g, "cpu", recipe.crop_scale, recipe.hflip, recipe.rotate, recipe.jitter,
                                  size, recipe.crop_ratio, recipe.crop_sampling, recipe.crop_antialias))
        if alpha:
            rng = np.random.default_rng([seed, v, 1])
            partners.append((np.arange(n) + rng.integers(1, n, n)) % n)  # any other image, uniformly
            lams.append(rng.beta(alpha, alpha, n).astype(np.float32))
    if not alpha:
        return Views(params)
    return Views(params, torch.from_numpy(np.stack(partners)), torch.from_numpy(np.stack(lams)))


def views_key(identity: dict, split: str, files: list[Path], recipe, size: int, side: int, batch: int, count: int,
              seed: int, alpha: float | None) -> str:
    """Identity of a set of stored views: the teacher, the images in order, what shapes a view, and the batch
    shape both passes render with."""
    what = {"teacher": identity, "split": split, "aug": {f: getattr(recipe, f) for f in AUG_FIELDS}, "size": size,
            "side": side, "batch": batch, "views": count, "seed": seed, "alpha": alpha or 0}
    h = hashlib.sha256(json.dumps(what, sort_keys=True).encode())
    h.update("\n".join(map(str, files)).encode())
    return h.hexdigest()[:16]


def label_views(views: Views, teacher, source, batch: int, progress: bool = False) -> torch.Tensor:
    """The teacher's probabilities (V, N, C) float16 of every stored view: `teacher(x, idx)` (an OnlineTeacher made
    with the training files) on each view rendered from `source` (the training split's images) in batches of
    exactly `batch` rows, the student's batch (the last one padded with row 0, whose outputs are dropped)."""
    n = len(source)
    device = source.device
    out = None
    from tqdm import tqdm
    bar = tqdm(total=views.count * n, unit="img", unit_scale=True, leave=False, desc="teacher views",
               disable=not progress)
    for v in range(views.count):
        for start in range(0, n, batch):
            idx = torch.arange(start, min(start + batch, n), device=device)
            padded = torch.cat([idx, idx.new_zeros(batch - len(idx))])
            x, _ = views.render(source[padded], padded, v, source)
            p = teacher(x, padded)[:len(idx)].to(torch.float16).cpu()
            if out is None:
                out = torch.zeros(views.count, n, p.shape[1], dtype=torch.float16)
            out[v, start:start + len(idx)] = p
            bar.update(len(idx))
    bar.close()
    return out


def save_views(path: Path, views: Views, key: str, files: list[Path], seed: int, alpha: float | None) -> None:
    p0 = views.params[0]
    arrays = {"key": np.array(key), "files": np.array([str(f) for f in files]), "seed": np.array(seed),
              "alpha": np.array(alpha or 0.0), "geometry": np.array(p0.geometry), "size": np.array(p0.size),
              "probs": views.probs.numpy()}
    for name in AugParams.TENSORS:
        if getattr(p0, name) is not None:
            arrays[name] = torch.stack([getattr(p, name) for p in views.params]).cpu().numpy()
    if views.partner is not None:
        arrays["partner"], arrays["lam"] = views.partner.numpy(), views.lam.numpy()
    save_probs(path, **arrays)


def read_views(path: Path) -> tuple[str, Views]:
    """(its key, the stored views) of a teacher_views.npz."""
    z = load_npz(path)
    count = len(z["probs"])
    params = [AugParams(str(z["geometry"]), int(z["size"]),
                        **{name: torch.from_numpy(z[name][v]) for name in AugParams.TENSORS if name in z})
              for v in range(count)]
    partner = torch.from_numpy(z["partner"]) if "partner" in z else None
    lam = torch.from_numpy(z["lam"]) if "lam" in z else None
    return str(z["key"]), Views(params, partner, lam, torch.from_numpy(z["probs"]))


def load_or_label_views(teacher, identity: dict, split: str, files: list[Path], run_dir: Path, source, recipe,
                        size: int, side: int, count: int, seed: int, alpha: float | None,
                        progress: bool = False) -> Views:
    """The stored views in run_dir/teacher_views.npz when they are these (views_key), else drawn, labelled by
    `teacher` and stored (atomically); on the training device."""
    path = Path(run_dir) / VIEWS_FILE
    key = views_key(identity, split, files, recipe, size, side, recipe.batch_size, count, seed, alpha)
    if path.exists():
        stored_key, views = read_views(path)
        if stored_key == key:
            print(f"  teacher views: reusing {path} ({views.count} views x {views.probs.shape[1]} images)")
            return views.to(source.device)
        print(f"  teacher views: {path} is another teacher's, other images' or other views': labelling again")
    print(f"  teacher views: {count} view(s) x {len(files)} images{f', mixup alpha {alpha:g}' if alpha else ''} "
          f"(seed {seed}), labelled once by the teacher; stored in {path}")
    views = draw_views(len(files), side, recipe, size, count, seed, alpha).to(source.device)
    views.probs = label_views(views, teacher, source, recipe.batch_size, progress)
    save_views(path, Views([p.to("cpu") for p in views.params],
                           None if views.partner is None else views.partner.cpu(),
                           None if views.lam is None else views.lam.cpu(), views.probs), key, files, seed, alpha)
    return views
