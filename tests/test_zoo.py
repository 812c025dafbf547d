import json
import time
import warnings

import pytest
import timm
import torch

from zoo import ZOO, Recipe, UnknownModel, create_model, get_entry, get_recipe
from zoo.pretrained import PretrainedUnavailable, build_backbone

K = (7, 3, 3, 4, 6, 3)


@pytest.mark.parametrize("name", list(ZOO))
def test_every_zoo_entry_builds_and_steps(name):
    torch.manual_seed(0)
    model, init = create_model(name, K, dropout=0.1, hidden=16, pretrained="none")
    assert init["init"] == "scratch"
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert [o.shape for o in out] == [(2, k) for k in K]
    loss = sum(o.logsumexp(1).mean() for o in out)
    loss.backward()
    head = model.head.weight
    assert head.grad is not None and head.grad.abs().sum() > 0


def test_unknown_model_suggests_closest():
    with pytest.raises(UnknownModel, match="closest: resnet50"):
        get_entry("resnet5O")


def test_any_timm_model_works():
    e = get_entry("mobilenetv3_small_050")
    assert e.timm_name == "mobilenetv3_small_050" and e.size == 224


def test_recipe_presets_reproduce_public_recipes():
    fn = get_recipe("fashionnet")
    assert (fn.optimizer, fn.lr, fn.momentum, fn.weight_decay, fn.schedule, fn.batch_size, fn.epochs) == \
        ("sgd", 1e-4, 0.9, 1e-4, "plateau", 32, 50)
    assert (fn.hidden, fn.dropout, fn.loss, fn.plateau_patience, fn.plateau_factor) == (512, 0.5, "inverse", 5, 0.1)
    eb = get_recipe("effb3-300")
    assert (eb.size, eb.lr, eb.schedule, eb.weight_decay, eb.dropout, eb.hidden, eb.select) == \
        (300, 0.1, "cosine", 1e-5, 0.2, 0, "val_loss")
    with pytest.raises(ValueError, match="unknown recipe field"):
        Recipe().updated(lrr=1)
    with pytest.raises(ValueError, match="loss='foo' is not one of none, inverse"):
        Recipe().updated(loss="foo")
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        Recipe(epochs=0)


def test_pretrained_auto_falls_back_fast_when_offline(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://10.255.255.1")  # unroutable: the probe must time out, not hang
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-cache")
    monkeypatch.setenv("TORCH_HOME", "/nonexistent-torch-home")
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, info = build_backbone("resnet18.tv_in1k", "auto")
    assert time.perf_counter() - t0 < 2.0
    assert info["init"] == "scratch" and "random init" in info["warning"]
    assert any(issubclass(w.category, PretrainedUnavailable) for w in caught)


def test_local_weights_file_loads(tmp_path):
    src = timm.create_model("resnet18", num_classes=0)
    with torch.no_grad():
        src.conv1.weight.fill_(0.125)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    model, info = build_backbone("resnet18", str(path))
    assert info["init"] == "file" and info["matched"] == info["of"]
    assert torch.equal(model.conv1.weight, src.conv1.weight)
    with pytest.raises(FileNotFoundError):
        build_backbone("resnet18", str(tmp_path / "missing.pth"))
    torch.save({"unrelated": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="no tensor matches"):
        build_backbone("resnet18", str(tmp_path / "bad.pth"))


def test_list_prints_the_zoo(capsys):
    from bench.run import main as run_main
    run_main(["--list"])
    out = capsys.readouterr().out
    for name, params in (("resnet50", "23.5"), ("effb3", "10.7"), ("vgg16", "134.3")):
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(name))
        assert params in line
    assert "effv2s" in out and "300" in out
    # every recipe preset's values, one column each (issue #15: the init-dependent recipes are shown in --list)
    rows = {ln.split()[0]: ln.split()[1:] for ln in out.split("\nRecipes")[1].splitlines()[1:] if ln.strip()}
    assert rows["scratch"] == ["finetune", "v0", "fashionnet", "effb3-300"]  # the header line
    assert rows["optimizer"] == ["nesterov", "adamw", "adamw", "sgd", "sgd"]
    assert rows["lr"] == ["0.1", "0.001", "0.001", "0.0001", "0.1"]
    assert rows["select"] == ["last", "last", "overall_acc", "overall_acc", "val_loss"]


def test_default_recipe_follows_the_init(tmp_path, monkeypatch):
    """`default` is finetune when weights will load, scratch otherwise; --recipe forces either."""
    from bench.training.train import resolve_recipe
    weights = tmp_path / "w.pth"
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), weights)
    assert resolve_recipe("resnet18", None, {"pretrained": "none"})[0].name == "scratch"
    assert resolve_recipe("resnet18", None, {"pretrained": str(weights)})[0].name == "finetune"
    assert resolve_recipe("resnet18", "scratch", {"pretrained": str(weights)})[0].name == "scratch"
    monkeypatch.setattr("zoo.pretrained.weights_reachable", lambda *a, **k: False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-home"))
    assert resolve_recipe("resnet18", None, {})[0].name == "scratch"  # auto, offline: random init
    monkeypatch.setattr("zoo.pretrained.weights_reachable", lambda *a, **k: True)
    recipe, size = resolve_recipe("resnet18", None, {"epochs": 3})
    assert (recipe.name, recipe.epochs, recipe.select, size) == ("finetune", 3, "last", 224)
    assert get_recipe("scratch").optimizer == "nesterov" and get_recipe("scratch").select == "last"


def test_set_parses_any_recipe_field_by_its_type():
    from zoo.recipes import parse_setting
    assert parse_setting("lr=0.05") == ("lr", 0.05)
    assert parse_setting("epochs=12") == ("epochs", 12)
    assert parse_setting("crop-antialias=Yes") == ("crop_antialias", True)
    assert parse_setting("hflip=0") == ("hflip", False)
    assert parse_setting("crop_sampling=side") == ("crop_sampling", "side")
    assert parse_setting("size=96") == ("size", 96)
    for bad, says in (("bogus=1", "FIELD one of"), ("lr", "FIELD=VALUE"), ("epochs=2.5", "epochs takes int"),
                      ("ema=maybe", "true or false"), ("name=x", "FIELD one of")):
        with pytest.raises(ValueError, match=says):
            parse_setting(bad)


def test_run_set_overrides_recipe_fields_and_records_them(tiny_root, tmp_path, capsys):
    from bench.run import main as run_main
    base = ["--models", "resnet18", "--data", str(tiny_root), "--out", str(tmp_path / "r"), "--size", "32",
            "--epochs", "1", "--batch-size", "16", "--pretrained", "none", "--no-progress", "--no-report"]
    run_main([*base, "--set", "crop_antialias=true", "--set", "lr_floor=0", "--set", "crop_scale=0.5"])
    recipe = json.loads((tmp_path / "r" / "default" / "resnet18" / "run.json").read_text())["config"]["recipe"]
    assert (recipe["name"], recipe["crop_antialias"], recipe["lr_floor"], recipe["crop_scale"]) == \
        ("scratch", True, 0.0, 0.5)
    for extra, says in ((["--set", "lr=0.2", "--lr", "0.1"], "given twice"), (["--set", "lr=fast"], "lr takes float"),
                        (["--recipe", "v0", "--set", "crop_antialias=true"], "cannot rotate")):
        with pytest.raises(SystemExit):
            run_main([*base, "--run", "bad", *extra])
        assert says in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the same field set twice names both --set arguments, not a flag that does not exist
        run_main([*base, "--run", "bad", "--set", "crop_sampling=side", "--set", "crop_sampling=area"])
    assert "--set crop_sampling=area and --set crop_sampling=side: the recipe field crop_sampling is given twice" in \
        capsys.readouterr().err
