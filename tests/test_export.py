"""bench.export --format onnx: onnxruntime gives PyTorch's probabilities (a run and an ensemble entry, any batch),
the metadata carries what predicting needs, bench.predict --onnx gives the PyTorch path's CSV, and a graph of
another model, or no graph of this project's, is refused; so are outputs and flags that would fail after the work."""
import contextlib
import io
import json
import shutil

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install -e '.[onnx]'")
onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed: pip install -e '.[onnx]'")

from bench.data import open_dataset  # noqa: E402
from bench.data.images import decode  # noqa: E402
from bench.ensemble import main as ensemble_main  # noqa: E402
from bench.export import main as export_main  # noqa: E402
from bench.predict import main as predict_main  # noqa: E402
from test_predict import csv_probs, list_file, read_csv  # noqa: E402


def images(files, size, policy):
    return np.stack([decode(f, size, policy) for f in files])


def run_graph(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate(session.run(None, {"images": x}), 1)


CLOCK = [100.0, 100.4, 250.0, 251.2]  # the latency timer's readings: onnxruntime's timed run, then PyTorch's


@pytest.fixture(scope="module")
def exported(demo_runs, tmp_path_factory):
    """A copy of the demo runs with an entry `ens` (class metric, geometric combiner, fitted weights), the graph of
    default/resnet18 (--metric class; its default path in the working folder, timed by the scripted CLOCK, its
    printed lines kept) and the entry's graph (replacing, with --force, a file already at its --out)."""
    from bench.inference import onnx_export
    root = tmp_path_factory.mktemp("export")
    runs = root / "runs"
    shutil.copytree(demo_runs, runs)
    ensemble_main(["--runs-dir", str(runs), "--out", str(root / "sub"), "--no-report", "--metric", "class",
                   "--combine", "geometric", "--weights", "fitted", "--name", "ens"])
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr(onnx_export, "clock", iter(CLOCK).__next__)
        model = export_main(["--model", "default/resnet18", "--format", "onnx", "--runs-dir", str(runs), "--metric",
                             "class", "--workdir", str(root / "wd")])
    model["printed"] = printed.getvalue()
    (root / "e.onnx").write_bytes(b"an older graph")
    ens = export_main(["--ensemble", "ens", "--format", "onnx", "--runs-dir", str(runs),
                       "--out", str(root / "e.onnx"), "--force"])
    return runs, model, ens


def test_model_graph_equals_pytorch(exported, tiny_root, capsys):
    runs, model, _ = exported
    meta = json.loads((runs / "default/resnet18/run.json").read_text())
    size, policy = meta["config"]["size"], meta["config"]["recipe"]["resize"]
    stored = np.load(runs / "default/resnet18/probs_val.npz")
    files = open_dataset(tiny_root, check_images=False).files("val")
    x = images(files, size, policy)
    got = run_graph(model["path"], x)  # uint8 NHWC in, the normalisation and both views inside
    assert got == pytest.approx((stored["plain"] + stored["flip"]) / 2, abs=1e-4)
    assert run_graph(model["path"], x[:1]) == pytest.approx(got[:1], abs=1e-5)  # dynamic batch: 1 and 40
    assert model["max_abs_diff"] < 1e-4
    graph = onnx.load(str(model["path"]))
    assert graph.opset_import[0].version >= 17
    props = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(props["class_names"]) == meta["class_names"]
    assert json.loads(props["attributes"]) == meta["attributes"]
    assert (json.loads(props["size"]), json.loads(props["resize"])) == (size, policy)
    assert json.loads(props["decision"]) == "logit_adjusted" and len(json.loads(props["tau"])) == 6
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


def test_ensemble_graph_equals_the_entry(exported, tiny_root):
    """The entry's members, weights and geometric combiner in one graph give the combined test probabilities the
    ensembler stored."""
    runs, _, ens = exported
    entry = json.loads((runs / "_ensembles/ens/run.json").read_text())
    meta = json.loads((runs / "default/resnet18/run.json").read_text())
    files = open_dataset(tiny_root, check_images=False).files("test")
    got = run_graph(ens["path"], images(files, meta["config"]["size"], meta["config"]["recipe"]["resize"]))
    assert got == pytest.approx(np.load(runs / "_ensembles/ens/probs_test.npz")["plain"], abs=1e-4)
    props = {p.key: json.loads(p.value) for p in onnx.load(str(ens["path"])).metadata_props if p.key != "fashion_bench"}
    assert props["tau"] == entry["decision_params"]["tau"] and props["members"] == entry["members"]


@pytest.mark.parametrize("which", [["--model", "default/resnet18", "--metric", "class"], ["--ensemble", "ens"]])
def test_predict_with_the_graph_gives_the_pytorch_csv(exported, tiny_root, tmp_path, which):
    runs, model, ens = exported
    graph = model["path"] if which[0] == "--model" else ens["path"]
    src = list_file(tmp_path, open_dataset(tiny_root, check_images=False).files("test"))
    common = [str(src), "--runs-dir", str(runs), "--probs", "--no-progress"]
    predict_main([*common, *which, "--out", str(tmp_path / "torch.csv")])
    predict_main([*common, *which, "--onnx", str(graph), "--out", str(tmp_path / "onnx.csv")])
    predict_main([*common, "--onnx", str(graph), "--out", str(tmp_path / "alone.csv")])  # the metadata suffices
    want = csv_probs(tmp_path / "torch.csv")
    for name in ("onnx.csv", "alone.csv"):
        got = csv_probs(tmp_path / name)
        assert read_csv(tmp_path / name)[0] == read_csv(tmp_path / "torch.csv")[0]
        assert got[0] == want[0] and (got[1] == want[1]).all()
        assert got[2] == pytest.approx(want[2], abs=1e-4)


def test_mismatched_or_foreign_graphs_are_refused(exported, demo_runs, tiny_root, tmp_path, capsys):
    runs, model, _ = exported
    img = str(open_dataset(tiny_root, check_images=False).files("val")[0])

    def fails(args, message):
        out = tmp_path / "p.csv"
        with pytest.raises(SystemExit) as e:
            predict_main([img, "--runs-dir", str(runs), "--out", str(out), "--no-progress", *args])
        assert e.value.code == 2 and not out.exists()
        err = capsys.readouterr().err
        assert message in err, err

    fails(["--model", "b/resnet18", "--metric", "class", "--onnx", str(model["path"])], "members: graph")
    fails(["--model", "default/resnet18", "--onnx", str(model["path"])], "decision rule: graph")  # argmax wanted
    from onnx import TensorProto, helper
    foreign = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    fails(["--onnx", str(tmp_path / "foreign.onnx")], "not a graph exported by bench.export")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    fails(["--onnx", str(tmp_path / "junk.onnx")], "not a readable ONNX file")
    # another size than the model's: the graph was exported from a run with other settings
    props = {p.key: p.value for p in onnx.load(str(model["path"])).metadata_props}
    other = onnx.load(str(model["path"]))
    helper.set_model_props(other, {**props, "size": "48"})
    onnx.save(other, str(tmp_path / "other.onnx"))
    fails(["--model", "default/resnet18", "--metric", "class", "--onnx", str(tmp_path / "other.onnx")],
          "input size and resize policy: graph")
    # exporting a run without weights writes nothing
    no_weights = tmp_path / "runs"
    shutil.copytree(demo_runs, no_weights)
    (no_weights / "b/resnet18/best.pt").unlink()
    with pytest.raises(SystemExit) as e:
        export_main(["--model", "b/resnet18", "--format", "onnx", "--runs-dir", str(no_weights), "--out",
                     str(tmp_path / "x.onnx")])
    assert e.value.code == 2 and "has no weights" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()


def test_latency_is_the_timed_runs_per_image_and_printed_as_returned(exported):
    """ort_ms and torch_ms are the timer's intervals around the one timed run of each engine (after its warm-up),
    per image of the batch, in ms; the printed line gives those numbers. The graph went to the working folder's
    export/ folder, made and named."""
    _, model, _ = exported
    assert model["batch"] == 8
    assert model["ort_ms"] == pytest.approx(1e3 * (CLOCK[1] - CLOCK[0]) / 8)  # 50 ms
    assert model["torch_ms"] == pytest.approx(1e3 * (CLOCK[3] - CLOCK[2]) / 8)  # 150 ms
    assert (f"onnxruntime 50.00 ms, eager PyTorch 150.00 ms, ratio 0.33x; largest difference "
            f"{model['max_abs_diff']:.1e}") in model["printed"]
    folder = model["path"].parent
    assert model["path"] == folder / "default-resnet18.onnx" and folder.name == "export"
    assert f"made the folder {folder}" in model["printed"]


def test_outputs_and_flags_are_refused_before_the_work(exported, tmp_path, monkeypatch, capsys):
    """--out naming a folder failed with a traceback after the export; an existing file was replaced and missing
    folders made silently; --latency-batch 0 failed after writing the graph. Each is refused first: exit 2, nothing
    written, the model never loaded."""
    runs, _, _ = exported
    from bench.inference import onnx_export

    def no_work(plan):
        raise AssertionError("the export started")

    monkeypatch.setattr(onnx_export, "build_graph", no_work)
    base = ["--model", "default/resnet18", "--format", "onnx", "--runs-dir", str(runs), "--workdir",
            str(tmp_path / "wd")]

    def refused(extra, message):
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        with pytest.raises(SystemExit) as e:
            export_main([*base, *extra])
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and "Traceback" not in err, err
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before

    (tmp_path / "dir").mkdir()
    refused(["--out", str(tmp_path / "dir")], f"--out {tmp_path / 'dir'} is a folder; name the graph's file")
    (tmp_path / "other.onnx").write_bytes(b"another model's graph")
    refused(["--out", str(tmp_path / "other.onnx")],
            f"{tmp_path / 'other.onnx'} exists; pass --force to overwrite it or choose another --out")
    assert (tmp_path / "other.onnx").read_bytes() == b"another model's graph"
    refused(["--out", str(tmp_path / "no/dir/m.onnx")],
            f"--out {tmp_path / 'no/dir/m.onnx'}: the folder {tmp_path / 'no/dir'} does not exist; create it first")
    for batch in ("0", "-2"):
        refused(["--latency-batch", batch], f"--latency-batch {batch}: must be at least 1 image")
