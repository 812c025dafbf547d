from bench.speed import main


def test_speed_benchmark_measures_three_loops(tiny_root, tmp_path):
    rows = main(["--models", "resnet18", "--data", str(tiny_root), "--size", "32", "--batch-size", "16",
                 "--steps", "2", "--warmup", "1", "--workers", "0", "--out", str(tmp_path)])
    r = rows[0]
    assert r["model"] == "resnet18" and min(r["seed_style"], r["trainer"], r["model_only"]) > 0
    table = next(tmp_path.glob("speed-*.md")).read_text()
    assert "| resnet18 | 32 | 16 | eager |" in table and "--steps 2" in table
