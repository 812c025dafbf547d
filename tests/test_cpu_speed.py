"""Issue #42, the faster CPU paths give the same numbers: TensorFlow-SAME padding without a copy (zoo/fastpaths.py),
BatchNorm folding, channels_last vs NCHW, bf16 autocast (forced, within its rounding), the precision decided per
device and recorded outside the config, and bench.predict's onnxruntime engine (the same CSV as PyTorch)."""
import csv
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from bench.training import precision
from zoo import create_model
from zoo.fastpaths import SamePadConv2d, fold_batchnorm

K = (7, 3, 3, 4, 6, 3)


@pytest.fixture(autouse=True)
def _process_precision():
    """Commands run here set the process's --precision: put back the default after each test."""
    yield
    precision.configure("auto")


def _with_bn_statistics(model, size=32, steps=2):
    """Running BatchNorm statistics away from their init (mean 0, var 1), so that folding them is not a no-op."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.rand(8, 3, size, size) * 255)
    return model.eval()


def _pads_of_batch(model, x) -> int:
    """How many constant-pad ops ran on a tensor with x's batch size (an activation) in model(x)'s forward."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        model(x)
    return sum(1 for e in prof.events() if e.name == "aten::constant_pad_nd" and e.input_shapes
               and e.input_shapes[0] and e.input_shapes[0][0] == len(x))


@pytest.mark.parametrize("size", [32, 33])
def test_same_padding_without_a_copy_gives_timms_numbers(size):
    """tf_efficientnet_lite0 with timm's Conv2dSame and with SamePadConv2d: the same outputs and gradients (even
    and odd sizes: asymmetric and symmetric SAME padding), the same state_dict keys both ways (old checkpoints load),
    and no padded copy of an activation in the fast form."""
    from timm.layers.conv2d_same import Conv2dSame
    torch.manual_seed(0)
    slow, _ = create_model("tf_efficientnet_lite0", K, pretrained="none", fast_padding=False)
    fast, _ = create_model("tf_efficientnet_lite0", K, pretrained="none")
    assert list(slow.state_dict()) == list(fast.state_dict())
    fast.load_state_dict(slow.state_dict())  # an old run's checkpoint loads into the fast form, strictly
    slow.load_state_dict(fast.state_dict())  # and back
    count = lambda m, kind: sum(type(c) is kind for c in m.modules())  # noqa: E731
    assert count(slow, Conv2dSame) == count(fast, SamePadConv2d) == 5 and count(fast, Conv2dSame) == 0
    x = torch.rand(5, 3, size, size) * 255
    for m in (slow, fast):
        m.train()
        torch.manual_seed(1)  # the same dropout draws
        loss = sum(o.logsumexp(1).sum() for o in m(x))
        loss.backward()
    for (name, a), b in zip(slow.named_parameters(), fast.parameters()):
        # the same sums in another order (the padded weight, threads): equal to float32 rounding of the tensor's
        # size, not element by element (a gradient of 1e2 beside one of 1e-3 in the same sum)
        assert float((a.grad - b.grad).norm()) <= 1e-5 * float(a.grad.norm()) + 1e-7, name
    slow.eval(), fast.eval()
    with torch.no_grad():
        for a, b in zip(slow(x), fast(x)):
            assert torch.allclose(a, b, atol=1e-5)
        assert _pads_of_batch(slow, x) == 5 and _pads_of_batch(fast, x) == 0
    from bench.training.trainer import gflops  # the model's own k x k kernels, not the zero taps (0.259 at 128 px)
    assert gflops(fast, 128, torch.device("cpu")) == gflops(slow, 128, torch.device("cpu")) == 0.251


def test_same_padding_exports_to_onnx_with_the_same_numbers(tmp_path):
    """torch.onnx (2.14) drops the zero-padded weights of a deep enough tf_ network from its graph: the export pads
    the input as timm does (onnxruntime fuses it), and onnxruntime gives the network's numbers."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    net, _ = create_model("tf_efficientnet_lite0", K, pretrained="none")
    b = net.backbone
    head = torch.nn.Sequential(b.conv_stem, b.bn1, *b.blocks[:6]).eval()  # the 5 SAME convolutions (the 6th fails)
    path = tmp_path / "part.onnx"
    torch.onnx.export(head, (torch.zeros(2, 3, 32, 32),), str(path), input_names=["x"], dynamo=True,
                      opset_version=18, verbose=False)
    x = torch.rand(2, 3, 32, 32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - head(x).numpy()).max() < 1e-5


@pytest.mark.parametrize("name,folds", [("resnet18", 20), ("tf_efficientnet_lite0", 49)])
def test_folded_batchnorm_equals_eager_evaluation(name, folds):
    """Every BatchNorm after a convolution folds (timm's BatchNormAct2d keeps its activation); the outputs equal
    eager evaluation within float rounding (rtol 1e-4); the network itself is unchanged."""
    from bench.training.trainer import inference_net
    torch.manual_seed(0)
    model, _ = create_model(name, K, pretrained="none")
    model = _with_bn_statistics(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded, n = fold_batchnorm(model.backbone)
    assert n == folds
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    fast = inference_net(model)
    x = torch.rand(4, 3, 32, 32) * 255
    with torch.no_grad():
        want, got = model(x), fast(x.contiguous(memory_format=torch.channels_last))
        assert torch.allclose(folded(x), model.backbone(x), rtol=1e-4, atol=1e-5)
    for a, b in zip(want, got):
        scale = a.abs().max()
        assert (a - b).abs().max() <= 1e-4 * scale + 1e-6
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_a_network_fx_cannot_trace_is_left_unfolded():
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.bn(self.conv(x))
            return y if y.sum() > 0 else -y  # data-dependent control flow: not traceable

    m = Branchy().eval()
    out, n = fold_batchnorm(m)
    x = torch.rand(1, 3, 8, 8)
    assert n == 0 and torch.equal(out(x), m(x))


def test_channels_last_equals_contiguous_within_fp32_rounding():
    """The layout changes the memory order only: outputs and gradients agree (BatchNorm on its running statistics:
    batch statistics of 4 images at 1x1 pixel would amplify any rounding difference)."""
    torch.manual_seed(0)
    a, _ = create_model("tf_efficientnet_lite0", K, pretrained="none")
    a = _with_bn_statistics(a)
    b, _ = create_model("tf_efficientnet_lite0", K, pretrained="none")
    b.load_state_dict(a.state_dict())
    b = b.to(memory_format=torch.channels_last).eval()
    x = torch.rand(4, 3, 32, 32) * 255
    outs = []
    for m, xin in ((a, x), (b, x.contiguous(memory_format=torch.channels_last))):
        torch.manual_seed(1)  # the same dropout draws
        out = m(xin)
        sum(o.logsumexp(1).sum() for o in out).backward()
        outs.append(torch.cat(out, 1))
    assert torch.allclose(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-3, atol=1e-5), name


def test_precision_is_decided_per_device(monkeypatch):
    """auto: bf16 on CUDA; on a CPU fp32 while CPU_AUTO_BF16 is off, and once on, bf16 only where the CPU runs it
    natively; a forced bf16 on a CPU without it says it is emulated; an unknown value is refused."""
    native = {"avx512_bf16": True, "amx": False, "capability": "AVX512", "physical_cores": 2, "logical_cores": 2}
    none = {**native, "avx512_bf16": False}
    monkeypatch.setattr(precision, "cpu_features", lambda: native)
    assert precision.decide("cuda").precision == "bf16"
    assert precision.decide("cuda", "fp32").precision == "fp32"
    assert (precision.decide("cpu").precision, precision.decide("cpu").layout) == ("fp32", "channels_last")
    assert "CPU_AUTO_BF16" in precision.decide("cpu").reason
    monkeypatch.setattr(precision, "CPU_AUTO_BF16", True)
    assert precision.decide("cpu").precision == "bf16"
    monkeypatch.setattr(precision, "cpu_features", lambda: none)
    auto = precision.decide("cpu")
    assert auto.precision == "fp32" and "neither avx512_bf16 nor AMX" in auto.reason
    forced = precision.decide("cpu", "bf16")
    assert forced.precision == "bf16" and "emulated" in forced.reason
    precision.configure("bf16")
    assert precision.decide("cpu").precision == "bf16"  # the process's --precision is the default
    assert precision.decide("cpu", layout="contiguous").layout == "contiguous"
    with pytest.raises(ValueError, match="--precision fp16"):
        precision.decide("cpu", "fp16")


def test_forced_bf16_runs_convolutions_in_bf16_and_stays_close_to_fp32(tiny_root, tmp_path):
    """--precision bf16 on a CPU (emulated where the CPU lacks avx512_bf16/AMX: slower, same numbers): the training
    step's convolutions run in bf16 and the predictions stay within bf16's rounding of fp32. Tolerance: bf16 keeps 8
    significant bits (relative rounding 2^-9 = 0.2% per operation), so ~20 layers move a probability by a few
    hundredths at most (the CUDA tier's bf16 test allows 0.05 likewise)."""
    from conftest import build_trainer

    from bench.training.trainer import predict
    from zoo import get_recipe
    recipe = get_recipe("scratch").updated(epochs=1, batch_size=16, pretrained="none", ema=False)
    tr = build_trainer(tiny_root, tmp_path, recipe, precision="bf16")
    assert tr.numerics.precision == "bf16"
    seen = []
    hook = tr.model.backbone.conv1.register_forward_hook(lambda m, i, o: seen.append(o.dtype) and None)
    tr.train_epoch(max_steps=1)
    hook.remove()
    assert seen == [torch.bfloat16]
    bf16 = predict(tr.model, tr.val.x, 64, precision="bf16")
    fp32 = predict(tr.model, tr.val.x, 64, precision="fp32")
    assert bf16.dtype == fp32.dtype == torch.float32
    diff = (bf16 - fp32).abs().max().item()
    assert 0 < diff < 0.05


def test_precision_is_recorded_and_not_part_of_the_config(tiny_root, tmp_path, capsys):
    """run.json records precision and layout; the config does not hold them, so the same run under another
    --precision is the same run (skipped as finished, no 'different config'); the leaderboard's device column shows
    the precision."""
    from bench.run import main as run_main
    common = ["--models", "resnet18", "--data", str(tiny_root), "--out", str(tmp_path), "--size", "32",
              "--epochs", "1", "--batch-size", "16", "--pretrained", "none", "--no-progress", "--no-report"]
    run_main([*common, "--precision", "bf16"])
    out = capsys.readouterr().out
    assert "[precision] bf16, channels_last: --precision bf16 (given)" in out and "avx512_bf16" in out
    meta = json.loads((tmp_path / "default/resnet18/run.json").read_text())
    assert (meta["precision"], meta["layout"]) == ("bf16", "channels_last")
    assert "precision" not in json.dumps(meta["config"])
    assert precision.device_label(meta) == f"{meta['device']}, bf16"
    assert precision.device_label({"device": "CPU (2 cores)"}) == "CPU (2 cores), fp32"  # runs before #42
    assert precision.device_label({"kind": "ensemble", "device": "CPU (2 cores)"}) == "CPU (2 cores)"
    run_main([*common, "--precision", "fp32"])
    assert "already finished" in capsys.readouterr().out
    from bench.reporting.leaderboard import build_report
    build_report(tmp_path)
    board = pd.read_csv(next(tmp_path.rglob("leaderboard.csv")))
    assert list(board.loc[board["entry"] == "default/resnet18", "device"]) == [f"{meta['device']}, bf16"]


def test_apply_threads_respects_the_environment(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        assert "OMP_NUM_THREADS=1" in precision.apply_threads("cpu") and torch.get_num_threads() == 1
        for v in precision.THREAD_ENV:
            monkeypatch.delenv(v, raising=False)
        line = precision.apply_threads("cpu")
        assert torch.get_num_threads() == precision.physical_cores() <= precision.logical_cores()
        assert "physical cores" in line
        assert precision.apply_threads("cuda") == ""
    finally:
        torch.set_num_threads(before)


# --- bench.predict's engines ------------------------------------------------------------------------------------
def _csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    probs = [i for i, h in enumerate(header) if "=" in h]
    names = [i for i, h in enumerate(header) if i > 0 and "=" not in h and not h.endswith("_prob")]
    return ([r[0] for r in body], [[r[i] for i in names] for r in body],
            np.array([[float(r[i]) for i in probs] for r in body]))


def test_onnx_engine_gives_the_torch_csv_and_exports_once(demo_runs, tiny_root, tmp_path, capsys, monkeypatch):
    """--engine onnx exports the plan's graph once into the run folder (keyed to the weights and the plan) and gives
    the PyTorch CSV: the same class for every image and attribute, probabilities within 1e-4. `auto` runs PyTorch
    for a few images (the export would not pay) and the cached graph once it exists; the printed line says which."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from bench.data import open_dataset
    from bench.inference import engines as engine
    from bench.inference.predict import plan_model
    from bench.predict import main as predict_main
    runs = tmp_path / "runs"
    shutil.copytree(demo_runs, runs)
    files = open_dataset(tiny_root, check_images=False).files("val")
    src = tmp_path / "list.txt"
    src.write_text("".join(f"{os.path.relpath(f, tmp_path)}\n" for f in files))
    common = [str(src), "--model", "default/resnet18", "--runs-dir", str(runs), "--probs", "--no-progress"]
    predict_main([*common, "--out", str(tmp_path / "torch.csv")])
    out = capsys.readouterr().out
    assert "PyTorch on cpu (fp32, channels_last, BatchNorm folded" in out
    assert f"{len(files)} images < {engine.ONNX_MIN_IMAGES}" in out
    predict_main([*common, "--engine", "onnx", "--out", str(tmp_path / "onnx.csv")])
    out = capsys.readouterr().out
    assert "onnxruntime, graph" in out and "exported now" in out
    graphs = list((runs / "default/resnet18" / engine.GRAPH_DIR).glob("*.onnx"))
    assert len(graphs) == 1
    paths_t, names_t, probs_t = _csv(tmp_path / "torch.csv")
    paths_o, names_o, probs_o = _csv(tmp_path / "onnx.csv")
    assert paths_t == paths_o and names_t == names_o
    assert np.abs(probs_t - probs_o).max() < 1e-4
    # auto finds the cached graph: onnxruntime, nothing exported again
    mtime = graphs[0].stat().st_mtime_ns
    predict_main([*common, "--out", str(tmp_path / "auto.csv")])
    out = capsys.readouterr().out
    assert "onnxruntime, graph" in out and "(cached)" in out and "the graph is cached" in out
    assert graphs[0].stat().st_mtime_ns == mtime and _csv(tmp_path / "auto.csv")[1] == names_o
    # another plan (other views) is another graph
    plan = plan_model(runs, "default/resnet18")
    other = plan_model(runs, "default/resnet18", views=["plain"])
    assert engine.graph_key(plan) != engine.graph_key(other) and engine.find_graph(other) is None


def test_engine_choice(demo_runs, tiny_root, monkeypatch, capsys, tmp_path):
    """auto: PyTorch for bf16, CUDA, or without the onnx extra; onnx from ONNX_MIN_IMAGES images on; --engine onnx
    without the extra stops with exit 2 and writes nothing."""
    from bench.inference import engines as engine
    from bench.inference.predict import plan_model
    from bench.predict import main as predict_main
    plan = plan_model(demo_runs, "default/resnet18")
    monkeypatch.setattr(engine, "onnx_missing", lambda: None)
    monkeypatch.setattr(engine, "find_graph", lambda plan: None)
    many = engine.ONNX_MIN_IMAGES
    assert engine.choose_engine("auto", plan, "cpu", many)[0] == "onnx"
    assert engine.choose_engine("auto", plan, "cpu", many - 1)[0] == "torch"
    assert engine.choose_engine("auto", plan, "cpu", many, "bf16") == (
        "torch", "auto: bf16 runs in PyTorch (the ONNX graph is fp32)")
    assert engine.choose_engine("auto", plan, "cuda", many)[0] == "torch"
    assert engine.choose_engine("torch", plan, "cpu", many)[0] == "torch"
    monkeypatch.setattr(engine, "onnx_missing", lambda: "the onnx extra is not installed (onnx)")
    assert "not installed" in engine.choose_engine("auto", plan, "cpu", many)[1]
    from bench.data import open_dataset
    image = open_dataset(tiny_root, check_images=False).files("val")[0]
    out = tmp_path / "p.csv"
    with pytest.raises(SystemExit) as e:
        predict_main([str(image), "--model", "default/resnet18", "--runs-dir", str(demo_runs), "--engine", "onnx",
                      "--out", str(out), "--no-progress"])
    assert e.value.code == 2 and "not installed" in capsys.readouterr().err and not out.exists()
