"""Memory and time of the resident-data design as the dataset grows: the measurements of reports/reference/scaling.md.

Each point runs in a fresh process (so its resident set starts clean) and prints one JSON line:
    python scripts/scaling.py point --data ROOT --size 64 --model resnet18     # one process
    torchrun --nproc-per-node 2 scripts/scaling.py point --data ROOT ...        # per rank, data parallel
    python scripts/scaling.py point --data ROOT --data-mode stream --repeat 10  # batches read from the cache file;
                                                                                # the train split listed 10 times
The whole table (demo sets of 1x/2x/4x a base size, generated under --work, each point --runs times):
    python scripts/scaling.py table --work /tmp/scaling --base 400 --size 64 --model resnet18 --runs 2
Resident vs stream data mode on a real dataset, its train split as it is and repeated (a list of repeated paths:
nothing is copied), each point in a fresh process after printing the load average (`uptime`):
    python scripts/scaling.py modes --data ROOT --repeats 1,10 --size 64 --model resnet18 --batch-size 64 --runs 1
Resident set = VmRSS of /proc/self/status (Linux), peak = VmHWM; "data" is the growth of the resident set while the
decoded uint8 splits are loaded and made training tensors (Split), "trainer" its further growth through the trainer's
construction and one epoch (train + validation). In stream mode the pages of the memory-mapped cache file that a
process has read count in its resident set too (RssFile), but the kernel may drop them under memory pressure;
RssAnon is the memory it cannot.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the suite's bench package


def rss_mib(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def repeated(ds, k: int):
    """`ds` with its train split listed k times over (paths and labels): a k-times larger set, nothing copied."""
    import dataclasses

    import numpy as np
    tr = ds.splits["train"]
    train = dataclasses.replace(tr, paths=tr.paths * k, labels=np.tile(tr.labels, (k, 1)))
    return dataclasses.replace(ds, splits={**ds.splits, "train": train})


def point(a) -> None:
    import numpy as np
    import torch

    from bench.data import class_counts, open_dataset
    from bench.training.distributed import from_env
    from bench.training.train import ImageStore, resolve_recipe
    from bench.training.trainer import Trainer
    from zoo import create_model
    dist = from_env(a.device)
    device = dist.device if dist.enabled else torch.device(a.device)
    cuda = device.type == "cuda"
    torch.set_num_threads(a.threads or max(1, (os.cpu_count() or 1) // dist.world))
    ds = open_dataset(a.data)
    if a.repeat > 1:
        ds = repeated(ds, a.repeat)
    recipe, size = resolve_recipe(a.model, "scratch", {"size": a.size, "epochs": 1, "batch_size": a.batch_size,
                                                       "pretrained": "none"})
    store = ImageStore(ds, device, progress=False, dist=dist, mode=a.data_mode)
    base = rss_mib()
    t0 = time.perf_counter()
    arrays = store.arrays(size, recipe.resize)
    load_s = time.perf_counter() - t0
    nbytes = sum(v.nbytes for v in arrays.values())
    n = sum(len(v) for v in arrays.values())
    after_arrays = rss_mib()
    train, val = (store.split(s, size, recipe.resize) for s in ("train", "val"))
    store.split("test", size, recipe.resize)
    after_splits = rss_mib()
    gpu_data = torch.cuda.memory_allocated(device) / 2**20 if cuda else 0.0
    torch.manual_seed(0)
    model, _ = create_model(a.model, ds.num_classes, recipe.dropout, recipe.hidden, "none")
    tr = Trainer(model, recipe, train, val, Path(a.tmp), class_counts(ds.splits["train"].labels, ds.num_classes),
                 size=size, progress=False, persist=False, dist=dist)
    t0 = time.perf_counter()
    tr.train_epoch(max_steps=a.max_steps)
    epoch_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tr.validate()
    val_s = time.perf_counter() - t0
    row = {"rank": dist.rank, "world": dist.world, "threads": torch.get_num_threads(), "size": size,
           "images": n, "train_images": int(train.x.shape[0]), "decoded_bytes": int(nbytes),
           "bytes_per_image": nbytes / max(n, 1), "load_s": round(load_s, 2),
           "rss_base_mib": round(base, 1), "data_mib": round(after_splits - base, 1),
           "arrays_mib": round(after_arrays - base, 1), "trainer_mib": round(rss_mib() - after_splits, 1),
           "rss_mib": round(rss_mib(), 1), "peak_mib": round(rss_mib("VmHWM"), 1),
           "rss_anon_mib": round(rss_mib("RssAnon"), 1), "rss_file_mib": round(rss_mib("RssFile"), 1),
           "epoch_s": round(epoch_s, 2), "val_s": round(val_s, 2), "img_per_s": round(
               min(tr.steps_per_epoch, a.max_steps or tr.steps_per_epoch) * tr.batch_size / epoch_s, 1),
           "numpy": np.__version__, "device": str(device),
           "data_mode": a.data_mode, "repeat": a.repeat, "steps": a.max_steps, "torch": torch.__version__,
           "python": sys.version.split()[0]}
    if cuda:  # on the GPU: the resident data and the peak of training on top of it
        row.update(gpu_data_mib=round(gpu_data, 1),
                   gpu_peak_mib=round(torch.cuda.max_memory_allocated(device) / 2**20, 1))
    print("POINT " + json.dumps(row), flush=True)
    dist.close()


def make_demo(work: Path, factor: int, base: int) -> Path:
    from bench.data.demo import DemoSpec, write_demo
    root = work / f"demo-{factor}x"
    if not (root / "split" / "train.txt").exists():
        write_demo(root, DemoSpec(seed=0, train=base * factor, val=base * factor // 4, test=base * factor // 4))
    return root


def run_point(args: list[str], torchrun: int = 0) -> list[dict]:
    cmd = [sys.executable, __file__, "point", *args]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={torchrun}",
               __file__, "point", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [json.loads(line[6:]) for line in out.splitlines() if line.startswith("POINT ")]


def table(a) -> None:
    import statistics
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ["FASHION_BENCH_CACHE"] = str(work / "cache")
    rows = []
    common = ["--size", str(a.size), "--model", a.model, "--batch-size", str(a.batch_size), "--tmp", str(work / "t")]
    for factor in map(int, a.factors.split(",")):
        root = make_demo(work, factor, a.base)
        for world in (1, *([2] if factor == max(map(int, a.factors.split(","))) and a.ddp else [])):
            runs = [run_point(["--data", str(root), *common], torchrun=world if world > 1 else 0)
                    for _ in range(a.runs)]
            r0 = [min(r, key=lambda x: x["rank"]) for r in runs]  # rank 0's row of each run
            row = dict(r0[-1], factor=factor, epoch_s=statistics.median(r["epoch_s"] for r in r0),
                       epoch_all=[r["epoch_s"] for r in r0], data_all=[r["data_mib"] for r in r0])
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| set | processes | images (this process) | decoded MiB | data RSS MiB | trainer RSS MiB | peak RSS MiB "
          "| epoch s (median) | img/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['factor']}x | {r['world']} | {r['images']} | {r['decoded_bytes'] / 2**20:.1f} | {r['data_mib']} "
              f"| {r['trainer_mib']} | {r['peak_mib']} | {r['epoch_s']} | {r['img_per_s']} |")


def load_average() -> float:
    """The 1-minute load average (the CPU is shared: recorded next to every number)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def modes(a) -> None:
    """Epoch time and peak resident set of each data mode at each size of the set, a fresh process per point; before
    each point, wait (up to --wait s) for the 1-minute load average to fall to --max-load, and record it."""
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ["FASHION_BENCH_CACHE"] = str(work / "cache")
    rows = []
    common = ["--data", a.data, "--size", str(a.size), "--model", a.model, "--batch-size", str(a.batch_size),
              "--tmp", str(work / "t")]
    for k in map(int, a.repeats.split(",")):
        run_point([*common, "--repeat", str(k), "--data-mode", "stream", "--max-steps", "1"])  # decode, not timed
        for _ in range(a.runs):
            for mode in a.modes.split(","):
                deadline = time.time() + a.wait
                while load_average() > a.max_load and time.time() < deadline:
                    time.sleep(10)
                before = load_average()
                steps = ["--max-steps", str(a.max_steps)] if a.max_steps and k > 1 else []
                r = run_point([*common, "--repeat", str(k), "--data-mode", mode, *steps])[0]
                r.update(load_before=before, load_after=load_average(), uptime=subprocess.run(
                    ["uptime"], capture_output=True, text=True).stdout.strip())
                rows.append(r)
                print(json.dumps(r), flush=True)
    print("\n| train images | mode | epoch s (steps timed) | img/s | val s | peak RSS MiB (VmHWM) | RssAnon MiB "
          "| RssFile MiB | decoded MiB | load avg (1 min) before / after |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        timed = f" ({r['steps']} steps)" if r.get("steps") else ""
        print(f"| {r['train_images']} | {r['data_mode']} | {r['epoch_s']}{timed} | {r['img_per_s']} | {r['val_s']} "
              f"| {r['peak_mib']} | {r['rss_anon_mib']} | {r['rss_file_mib']} | {r['decoded_bytes'] / 2**20:.0f} "
              f"| {r['load_before']:.2f} / {r['load_after']:.2f} |")


def sizes(a) -> None:
    """Decoded bytes per image and the resident set they add, at each input size, in a fresh process each."""
    work = Path(a.work)
    os.environ["FASHION_BENCH_CACHE"] = str(work / "cache")
    root = make_demo(work, 1, a.base)
    print("| size | images | bytes/image (array) | size*size*3 | data RSS MiB | RSS/array |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in map(int, a.sizes.split(",")):
        r = run_point(["--data", str(root), "--size", str(s), "--model", a.model, "--batch-size", "32",
                       "--tmp", str(work / "t")])[0]
        ratio = r["data_mib"] * 2**20 / r["decoded_bytes"]
        print(f"| {s} | {r['images']} | {r['bytes_per_image']:.0f} | {s * s * 3} | {r['data_mib']} | {ratio:.2f} |",
              flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("point")
    q.add_argument("--data", required=True)
    q.add_argument("--size", type=int, default=64)
    q.add_argument("--model", default="resnet18")
    q.add_argument("--batch-size", type=int, default=32)
    q.add_argument("--threads", type=int)
    q.add_argument("--tmp", default="/tmp/scaling-run")
    q.add_argument("--device", default="cpu", help="cpu | cuda (under torchrun: cuda:LOCAL_RANK)")
    q.add_argument("--data-mode", default="resident", choices=["resident", "stream"])
    q.add_argument("--repeat", type=int, default=1, help="list the train split this many times")
    q.add_argument("--max-steps", type=int, help="stop the epoch after this many steps")
    m = sub.add_parser("modes")
    m.add_argument("--data", required=True)
    m.add_argument("--work", default="/tmp/scaling-modes", help="decode cache and scratch (outside the repository)")
    m.add_argument("--repeats", default="1,10")
    m.add_argument("--modes", default="resident,stream")
    m.add_argument("--size", type=int, default=64)
    m.add_argument("--model", default="resnet18")
    m.add_argument("--batch-size", type=int, default=64)
    m.add_argument("--runs", type=int, default=1)
    m.add_argument("--max-load", type=float, default=1.5)
    m.add_argument("--wait", type=float, default=120, help="seconds to wait for the load to fall, per point")
    m.add_argument("--max-steps", type=int,
                   help="on the repeated sets, time this many steps instead of the whole epoch (a loaded CPU)")
    t = sub.add_parser("table")
    t.add_argument("--work", default="/tmp/scaling")
    t.add_argument("--base", type=int, default=400)
    t.add_argument("--factors", default="1,2,4")
    t.add_argument("--size", type=int, default=64)
    t.add_argument("--model", default="resnet18")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--runs", type=int, default=2)
    t.add_argument("--ddp", action="store_true", help="also the largest set under torchrun with 2 processes")
    z = sub.add_parser("sizes")
    z.add_argument("--work", default="/tmp/scaling")
    z.add_argument("--base", type=int, default=400)
    z.add_argument("--sizes", default="64,128,224,300")
    z.add_argument("--model", default="test_resnet")
    a = p.parse_args()
    {"point": point, "table": table, "sizes": sizes, "modes": modes}[a.cmd](a)
