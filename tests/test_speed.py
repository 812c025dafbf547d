import pytest

from bench.speed import main


def test_speed_benchmark_measures_every_candidate_side_by_side(tiny_root, tmp_path, capsys):
    """One run: the seed-style loop, the trainer and its ceiling for each (precision, layout) in training, and the
    evaluation path and forward for each network form in inference; the CPU's features are named."""
    rows = main(["--models", "resnet18", "--data", str(tiny_root), "--size", "32", "--batch-size", "16",
                 "--steps", "2", "--warmup", "1", "--workers", "0", "--out", str(tmp_path), "--precision", "fp32,bf16",
                 "--layout", "channels_last,contiguous", "--no-onnx"])
    train = [r for r in rows if r["mode"] == "train"]
    infer = [r for r in rows if r["mode"] == "infer"]
    assert sorted((r["precision"], r["layout"]) for r in train) == [
        ("bf16", "channels_last"), ("bf16", "contiguous"), ("fp32", "channels_last"), ("fp32", "contiguous")]
    assert sorted((r["precision"], r["layout"], r["step"]) for r in infer) == sorted(
        (p, lay, form) for p in ("fp32", "bf16") for lay in ("channels_last", "contiguous") for form in
        ("eager", "folded"))
    r = train[0]
    assert r["model"] == "resnet18" and min(r["seed_style"], r["trainer"], r["model_only"]) > 0
    assert all(min(r["trainer"], r["model_only"]) > 0 for r in rows)
    table = next(tmp_path.glob("speed-*.md")).read_text()
    assert "| resnet18 | 32 | 16 | train | fp32 | channels_last | eager |" in table and "--steps 2" in table
    assert "| resnet18 | 32 | 16 | infer | bf16 | contiguous | folded |" in table
    out = capsys.readouterr().out
    assert "avx512_bf16" in out and "avx512_bf16" in table  # found or not, it says so


def test_speed_refuses_an_unknown_precision(tiny_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--models", "resnet18", "--data", str(tiny_root), "--size", "32", "--precision", "fp16",
              "--out", str(tmp_path)])
    assert e.value.code == 2 and "--precision fp16" in capsys.readouterr().err
    assert not list(tmp_path.glob("speed-*.md"))


def test_break_even_is_the_warm_up_over_the_time_saved_per_image():
    from bench.training.throughput import break_even
    base = {"model": "m", "size": 64, "mode": "infer", "precision": "fp32", "layout": "channels_last", "threads": 2}
    folded = {**base, "step": "folded", "trainer": 100.0, "warmup_s": 1.0}
    onnx = {**base, "step": "onnx", "trainer": 200.0, "warmup_s": 11.0}
    slow = {**base, "step": "compiled", "trainer": 90.0, "warmup_s": 30.0}
    rows = [folded, onnx, slow]
    # 10 s more warm-up, 1/100 - 1/200 = 5 ms saved per image: 2000 images
    assert break_even(onnx, rows) == "2000" and break_even(slow, rows) == "never" and break_even(folded, rows) == ""


def test_every_command_that_runs_networks_takes_precision():
    from bench.distill import build_parser as distill_parser
    from bench.predict import parse_args as predict_args
    from bench.run import build_parser as run_parser
    from bench.tune import build_parser as tune_parser
    assert run_parser().parse_args(["--precision", "bf16"]).precision == "bf16"
    assert tune_parser().parse_args(["--precision", "fp32"]).precision == "fp32"
    assert distill_parser().parse_args(["--teacher", "t", "--student", "s", "--precision", "bf16"]).precision == "bf16"
    assert predict_args(["x.jpg", "--model", "a/b", "--precision", "bf16", "--engine", "torch"]).precision == "bf16"
    assert run_parser().parse_args([]).precision == "auto"
    with pytest.raises(SystemExit):
        run_parser().parse_args(["--precision", "fp16"])
