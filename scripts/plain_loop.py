"""The plain loop of issue #15: a self-contained baseline that is NOT the suite's trainer.

ResNet-18 from scratch, SGD + Nesterov, per-step warmup + cosine, square random crops of a stretched image, flips,
last-epoch weights, flip-TTA on val. Only the dataset reader and the scorer come from the suite, so its numbers are
comparable with a leaderboard row (same images, same labels, same metric code).
    python scripts/plain_loop.py --data ../shared/fashion-dev --epochs 15 --size 96 --out /tmp/plain/result.json
The same loop for another timm model, from a weights file, on a GPU (bf16 autocast there, data kept on the device):
    python scripts/plain_loop.py --model tf_efficientnet_lite0 --pretrained W.pth --device cuda --size 224 ...
"""
import argparse, json, math, sys, time
from pathlib import Path

import numpy as np, timm, torch, torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the suite's bench package
from bench.data import open_dataset  # noqa: E402
from bench.metrics import probs_to_pred, score  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("--data", required=True); p.add_argument("--epochs", type=int, default=15)
p.add_argument("--size", type=int, default=96); p.add_argument("--seed", type=int, default=0)
p.add_argument("--out", required=True, help="result JSON; the val probabilities go to the same name .npz")
p.add_argument("--model", default="resnet18", help="timm model name (default resnet18, the issue's loop)")
p.add_argument("--pretrained", default="none", help="none (random init, the issue's loop) | PATH to a timm weights file")
p.add_argument("--device", default="cpu", help="cpu | cuda (bf16 autocast on cuda)")
a = p.parse_args()
torch.set_num_threads(2); torch.set_flush_denormal(True)  # denormals slow CPU math many-fold late in training
torch.manual_seed(a.seed)
dev = torch.device(a.device)
ds = open_dataset(a.data)
K = ds.num_classes  # (7, 3, 3, 4, 6, 3): one 26-output linear head, split per attribute
big = round(a.size / 0.88)  # 109 for 96: decode a bit larger so that train crops are downscales, never upscales
net = timm.create_model(a.model, num_classes=0)  # pooled features; random init unless --pretrained
if a.pretrained != "none":  # a timm-layout file: every backbone tensor must be there; the 1000-class head is dropped
    own, sd = net.state_dict(), torch.load(a.pretrained, map_location="cpu", weights_only=True)
    missing = [k for k in own if k not in sd]
    if missing:
        sys.exit(f"{a.pretrained}: no weights for {len(missing)} tensors of {a.model}, e.g. {missing[:3]}")
    net.load_state_dict({k: sd[k].float() for k in own})
MEAN = torch.tensor(net.pretrained_cfg["mean"]).view(1, 3, 1, 1).to(dev) * 255  # ImageNet's for resnet18,
STD = torch.tensor(net.pretrained_cfg["std"]).view(1, 3, 1, 1).to(dev) * 255    # 0.5 for the tf_ Lite0

def load(split):  # decode once, stretched to a square (no padding: every pixel is garment or background)
    ims = [np.asarray(Image.open(f).convert("RGB").resize((big, big), Image.BILINEAR)) for f in ds.files(split)]
    x = torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).contiguous()
    return x.to(dev), torch.from_numpy(ds.splits[split].labels).long().to(dev)

(xtr, ytr), (xva, yva) = load("train"), load("val")
norm = lambda x: ((x.float() - MEAN) / STD).contiguous(memory_format=torch.channels_last)  # noqa: E731

def augment(xb):  # square crop of 60-100% of the side, resized to `size` with antialiasing, then a random flip
    out = []
    for im in xb:
        s = int(big * (0.6 + 0.4 * torch.rand(1).item()))  # CPU generator: the same crops on every device
        top, left = torch.randint(0, big - s + 1, (2,)).tolist()
        im = TF.resized_crop(im, top, left, s, s, [a.size, a.size], antialias=True)
        out.append(im.flip(2) if torch.rand(1).item() < 0.5 else im)
    return torch.stack(out)

model = torch.nn.Sequential(net, torch.nn.Linear(net.num_features, sum(K))).to(dev, memory_format=torch.channels_last)
amp = torch.autocast("cuda", torch.bfloat16, enabled=dev.type == "cuda")
decay = [q for q in model.parameters() if q.ndim > 1]  # conv/linear weights; norms and biases get no decay
rest = [q for q in model.parameters() if q.ndim <= 1]
opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 0.0}],
                      lr=0.1, momentum=0.9, nesterov=True)
bs, steps = 64, len(xtr) // 64  # drop the ragged tail, as the suite does
total, warm = a.epochs * steps, max(1, round(0.05 * a.epochs * steps))
lr_at = lambda t: 0.1 * ((t + 1) / warm if t < warm else 0.5 * (1 + math.cos(math.pi * (t - warm) / (total - warm))))  # noqa: E731
loss_of = lambda z, y: sum(F.cross_entropy(zi, y[:, i], label_smoothing=0.1)  # noqa: E731
                           for i, zi in enumerate(z.split(K, 1)))
t0, t = time.time(), 0
for epoch in range(a.epochs):
    model.train(); perm, losses, te = torch.randperm(len(xtr)).to(dev), [], time.time()
    for i in range(steps):
        idx = perm[i * bs:(i + 1) * bs]
        for g in opt.param_groups:
            g["lr"] = lr_at(t)  # per-step schedule: warmup over the first 5% of steps, then cosine to 0
        with amp:
            loss = loss_of(model(norm(augment(xtr[idx]))).float(), ytr[idx])
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); losses.append(loss.item()); t += 1
    print(f"epoch {epoch + 1:2d}/{a.epochs}  loss {np.mean(losses):.4f}  {time.time() - te:.0f} s", flush=True)
train_s = time.time() - t0

@torch.no_grad()
def probs(x, flip):  # concatenated per-attribute softmax, as the suite's probs_val.npz
    model.eval(); out = []
    for i in range(0, len(x), 200):
        xb = norm(TF.resize(x[i:i + 200], [a.size, a.size], antialias=True))  # eval: the whole image at `size`
        with amp:
            z = model(xb.flip(3) if flip else xb).float()
        out.append(torch.cat([zi.softmax(1) for zi in z.split(K, 1)], 1))
    return torch.cat(out).cpu().numpy()

plain, flip, y = probs(xva, False), probs(xva, True), yva.cpu().numpy()
s_tta, s_plain = score(y, probs_to_pred((plain + flip) / 2, K), K), score(y, probs_to_pred(plain, K), K)
out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
np.savez(out.with_suffix(".npz"), plain=plain, flip=flip, labels=y)
json.dump({"overall_acc": s_tta["overall_acc"], "mean_class_acc": s_tta["mean_class_acc"], "val_tta": s_tta,
           "val": s_plain, "train_s": round(train_s, 1), "args": vars(a), "torch": torch.__version__,
           "timm": timm.__version__}, open(out, "w"), indent=1)
print(f"val (flip-TTA) overall {s_tta['overall_acc']:.4f}  class-average {s_tta['class_avg_acc']:.4f}  balanced "
      f"{s_tta['mean_class_acc']:.4f}   (no TTA: overall {s_plain['overall_acc']:.4f}, class-average "
      f"{s_plain['class_avg_acc']:.4f}, balanced {s_plain['mean_class_acc']:.4f})  train {train_s:.0f} s -> {out}")
