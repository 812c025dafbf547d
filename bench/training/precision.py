"""Per device: which precision and memory layout the networks run in, how many threads the CPU uses, and why.

The one owner of these decisions: the trainer (training steps and evaluation), `predict` (bench.predict, TTA views,
distillation teachers) and bench.speed ask `decide(device)`; nothing else picks a precision or a layout.

- **Precision.** `--precision auto|fp32|bf16` (bench.run, bench.distill, bench.tune, bench.predict) sets the
  process's request (`configure`). `bf16` is autocast to bfloat16 (weights, optimizer and loss stay fp32; no scaler
  is needed for bf16), `fp32` no autocast. `auto`: on CUDA bf16 (as always); on a CPU, bf16 only where the CPU runs
  it natively (avx512_bf16 or AMX: without them oneDNN emulates bf16, slower than fp32) AND `CPU_AUTO_BF16` is on.
  The precision is recorded in run.json (`precision`, `layout`, `precision_reason`) and is not part of a run's config
  (like the data mode), so a run resumes under either.
- **Layout.** channels_last on both devices (`LAYOUT`, one entry per device): measured on 2 idle CPU cores at 128 px
  (reports/reference/cpu.md, cpu-speed-table.md), training +7% over NCHW for Lite0 and ResNet-18, Lite0 inference
  386 img/s vs 312 (BatchNorm folded); on CUDA it is what tensor cores want. `python -m bench.speed --layout
  channels_last,contiguous` measures it again.
- **Threads** (CPU): intra-op = physical cores (hyper-threads share a core's vector units), inter-op 1 (the suite
  runs no inter-op parallel work); an OMP_NUM_THREADS / MKL_NUM_THREADS / TORCH_NUM_THREADS setting wins.

Importable without torch (command lines build their --help from PRECISIONS); torch loads on first use.
"""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from pathlib import Path

PRECISIONS = ("auto", "fp32", "bf16")

# `auto` on a CPU with native bf16 (avx512_bf16 or AMX): bf16 autocast when True, fp32 when False.
# False: on a CPU bf16 is opt-in (--precision bf16). Measured on the 2-core AMX CPU (reports/reference/cpu.md, idle,
# bench.speed, batch 64, 128 px): bf16 autocast trains ResNet-18 1.86x faster than fp32 (108.6 vs 58.4 img/s) but
# EfficientNet-Lite0 0.65x (37.3 vs 57.2: its depthwise convolutions are slower in bf16 here), and runs inference
# 2.4x (ResNet-18) and 1.23x (Lite0, BatchNorm folded) faster. One rule per device cannot pick bf16 for both
# families. Accuracy: ResNet-18, 8 epochs, three seeds, val overall 0.6634 fp32 vs 0.6696 bf16 (mean; p 0.32, no cost
# detected; reports/reference/cpu.md). Flipping it is this one line.
CPU_AUTO_BF16 = False

PRECISION_HELP = ("auto (default): bf16 autocast on CUDA; on a CPU "
                  + ("bf16 where the CPU runs it natively (avx512_bf16 or AMX), else fp32" if CPU_AUTO_BF16 else
                     "fp32 (bf16 is opt-in: 1.9x faster training for ResNet-style nets on an AMX CPU, 0.65x for "
                     "EfficientNet-Lite's depthwise convolutions; reports/reference/cpu.md)")
                  + "; fp32: no autocast; bf16: bfloat16 autocast (on a CPU without avx512_bf16/AMX it is emulated "
                  "and slower). Recorded in run.json; not part of the config (a run resumes under either)")

LAYOUT = {"cpu": "channels_last", "cuda": "channels_last"}  # measured: see the module docstring
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TORCH_NUM_THREADS")

_requested = "auto"  # the process's --precision (configure); decide() reads it when not given one


@dataclass(frozen=True)
class Numerics:
    """What a network runs in on one device: `precision` fp32 | bf16, `layout` channels_last | contiguous, and the
    reason (printed by the commands, recorded in run.json)."""
    device_type: str
    precision: str
    layout: str
    reason: str

    @property
    def memory_format(self):
        import torch
        return torch.channels_last if self.layout == "channels_last" else torch.contiguous_format

    def autocast(self):
        """The autocast context of this precision (a no-op for fp32)."""
        if self.precision == "bf16":
            import torch
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def record(self) -> dict:
        """run.json's fields."""
        return {"precision": self.precision, "layout": self.layout, "precision_reason": self.reason}


def check(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision}: one of {', '.join(PRECISIONS)}")
    return precision


def configure(precision: str = "auto") -> None:
    """Set the process's requested precision (each command's --precision); `decide` uses it by default."""
    global _requested
    _requested = check(precision)


def requested() -> str:
    return _requested


def cpu_features() -> dict:
    """What this CPU offers: {"avx512_bf16", "amx" (AMX tiles), "capability" (torch's ISA level), "physical_cores",
    "logical_cores" (those this process may run on)}. Asked of torch, never assumed (once per process)."""
    return dict(_cpu_features())


@functools.lru_cache(maxsize=1)
def _cpu_features() -> dict:
    import torch
    cpu = torch.cpu
    bf16 = bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())
    amx = bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # an old or unusual build
        capability = "unknown"
    logical, physical = logical_cores(), physical_cores()
    return {"avx512_bf16": bf16, "amx": amx, "capability": capability, "physical_cores": physical,
            "logical_cores": logical}


def native_bf16(features: dict | None = None) -> bool:
    """Does this CPU run bf16 convolutions natively (avx512_bf16 or AMX)?"""
    f = features or cpu_features()
    return bool(f["avx512_bf16"] or f["amx"])


def describe_features(f: dict | None = None) -> str:
    f = f or cpu_features()
    has = [n for n, k in (("avx512_bf16", "avx512_bf16"), ("AMX", "amx")) if f[k]]
    return (f"{', '.join(has) if has else 'no avx512_bf16, no AMX'} (ISA {f['capability']}); "
            f"{f['physical_cores']} physical / {f['logical_cores']} logical cores")


LAYOUTS = ("channels_last", "contiguous")


def decide(device, precision: str | None = None, layout: str | None = None) -> Numerics:
    """The precision and layout for `device` (a torch.device or its name) under `precision` (default: the process's
    configured --precision), with the reason. `layout` overrides the device's layout (bench.speed compares them)."""
    n = _decide(device, precision)
    if layout is None or layout == n.layout:
        return n
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout}: one of {', '.join(LAYOUTS)}")
    return Numerics(n.device_type, n.precision, layout, f"{n.reason}; layout {layout} (given)")


def _decide(device, precision: str | None) -> Numerics:
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    want = check(precision or _requested)
    layout = LAYOUT.get(kind, "channels_last")
    if kind == "cuda":
        if want == "auto":
            return Numerics(kind, "bf16", layout, "auto: bf16 autocast on CUDA")
        return Numerics(kind, want, layout, f"--precision {want} (given)")
    features = cpu_features()
    native = native_bf16(features)
    if want == "bf16":
        why = "--precision bf16 (given)" + ("" if native else "; this CPU has neither avx512_bf16 nor AMX: bf16 is "
                                                               "emulated, expect it slower than fp32")
        return Numerics(kind, "bf16", layout, why)
    if want == "fp32":
        return Numerics(kind, "fp32", layout, "--precision fp32 (given)")
    if not native:
        return Numerics(kind, "fp32", layout, "auto: this CPU has neither avx512_bf16 nor AMX (bf16 would be emulated)")
    if CPU_AUTO_BF16:
        return Numerics(kind, "bf16", layout, "auto: this CPU runs bf16 natively (avx512_bf16/AMX)")
    return Numerics(kind, "fp32", layout, "auto: fp32 on the CPU (CPU_AUTO_BF16; this CPU runs bf16 natively: "
                                          "--precision bf16 opts in, faster for ResNet-style nets, slower for "
                                          "depthwise ones; reports/reference/cpu.md)")


def precision_of(meta: dict) -> str | None:
    """The precision a run trained in: run.json's `precision`, else (runs from before it was recorded) what that
    version always used: bf16 on CUDA, fp32 on the CPU; None for an ensemble entry (its members say) or an unknown
    device."""
    if meta.get("kind", "model") != "model":
        return None
    if meta.get("precision"):
        return meta["precision"]
    device = str(meta.get("device") or "")
    if not device:
        return None
    return "fp32" if device.startswith("CPU") else "bf16"


def device_label(meta: dict) -> str | None:
    """The leaderboard's device column: the device and, where known, the precision (e.g. `CPU (2 cores), bf16`)."""
    device, precision = meta.get("device"), precision_of(meta)
    if not device:
        return device
    return f"{device}, {precision}" if precision else device


# --- threads -----------------------------------------------------------------------------------------------------
def logical_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def physical_cores() -> int:
    """Cores (not hyper-threads) among the CPUs this process may run on (Linux sysfs; else the logical count)."""
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return os.cpu_count() or 1
    cores = set()
    for c in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
        try:
            cores.add((topo.joinpath("physical_package_id").read_text().strip(),
                       topo.joinpath("core_id").read_text().strip()))
        except OSError:
            return len(cpus)
    return max(len(cores), 1)


def apply_threads(device) -> str:
    """On a CPU: intra-op threads = physical cores and inter-op threads 1, unless the environment sets a thread
    count (OMP_NUM_THREADS, MKL_NUM_THREADS, TORCH_NUM_THREADS), which wins. Returns what it did, for printing."""
    import torch
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    if kind != "cpu":
        return ""
    given = [v for v in THREAD_ENV if os.environ.get(v)]
    if given:
        return f"threads: {torch.get_num_threads()} intra-op ({given[0]}={os.environ[given[0]]})"
    cores = physical_cores()
    if torch.get_num_threads() != cores:
        torch.set_num_threads(cores)
    try:
        if torch.get_num_interop_threads() != 1:
            torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before any inter-op work started in this process; harmless to keep
        pass
    return f"threads: {torch.get_num_threads()} intra-op (physical cores), {torch.get_num_interop_threads()} inter-op"


def setup(precision: str, device) -> str:
    """What a command calls once its device is known: configure the precision, set the CPU threads; returns the line
    to print (what runs, and why)."""
    configure(precision)
    n = decide(device)
    line = f"[precision] {n.precision}, {n.layout}: {n.reason}"
    if n.device_type == "cpu":
        line += f"; CPU: {describe_features()}; {apply_threads(device)}"
    return line
