"""Does the way val images are prepared change a trained run's score? (issue #15, the plain loop's last difference)

Scores one finished run's best.pt on val prepared two ways: decoded straight at the run's size (what the suite does)
and decoded at size / 0.88, then resized to size with antialiasing (what scripts/plain_loop.py does). No training.
    python scripts/eval_input_path.py RUN_DIR [--data ROOT]      # RUN_DIR = runs/<run>/<model>
"""
import argparse, json, sys
from pathlib import Path

import torch, torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the suite's bench package
from bench.data import open_dataset  # noqa: E402
from bench.data.images import load_images  # noqa: E402
from bench.metrics import probs_to_pred, score  # noqa: E402
from bench.ensembling.tta import load_trained  # noqa: E402
from bench.training.trainer import predict  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("run_dir", type=Path)
p.add_argument("--data", help="dataset root (default: the run's data_root)")
a = p.parse_args()
meta = json.loads((a.run_dir / "run.json").read_text())
cfg, recipe = meta["config"], meta["config"]["recipe"]
ds = open_dataset(a.data or meta["data_root"])
size, policy, K = cfg["size"], recipe["resize"], tuple(meta["num_classes"])
model = load_trained(meta, a.run_dir / "best.pt")
as_nchw = lambda arr: torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # noqa: E731
direct = as_nchw(load_images(ds.files("val"), size, policy, progress=False))
big = as_nchw(load_images(ds.files("val"), round(size / 0.88), policy, progress=False)).float()
two_step = F.interpolate(big, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
two_step = two_step.round().clamp(0, 255).to(torch.uint8)
y = ds.splits["val"].labels
for name, x in (("direct", direct), ("two-step", two_step)):
    plain, flip = predict(model, x, 200), predict(model, x, 200, flip=True)
    s = score(y, probs_to_pred(plain.numpy(), K), K)
    t = score(y, probs_to_pred(((plain + flip) / 2).numpy(), K), K)
    print(f"{name:8s}  overall {s['overall_acc']:.4f}  class-average {s['class_avg_acc']:.4f}   flip-TTA overall "
          f"{t['overall_acc']:.4f}  class-average {t['class_avg_acc']:.4f}")
print(f"mean |pixel difference| between the two inputs: {(direct.float() - two_step.float()).abs().mean():.2f} of 255")
