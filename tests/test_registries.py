"""One registry per concept: a variant registered with one decorator appears in --help, in recipe validation and in
the code that uses it; unknown names fail with the registered choices."""
import contextlib
import shutil

import numpy as np
import pytest
import torch

from bench.registry import Registry, UnknownChoice


@contextlib.contextmanager
def registered(registry: Registry, fn):
    registry.register(fn)
    try:
        yield fn
    finally:
        registry._items.pop(fn.__name__)


def help_text(main_or_parse, capsys) -> str:
    with pytest.raises(SystemExit):
        main_or_parse(["--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_registry_names_describes_and_rejects_unknown_names():
    reg = Registry("widget")

    @reg.register
    def round_one(x):
        """a round one."""

    @reg.register(name="square")
    def _square(x):
        """100% square"""

    assert reg.names() == ("round_one", "square") and "square" in reg and len(reg) == 2
    assert reg["square"] is _square
    assert reg.describe() == "round_one: a round one; square: 100%% square"  # argparse-safe %
    with pytest.raises(UnknownChoice, match=r"unknown widget 'round_on' \(did you mean round_one\?\); choose one of: "
                                            r"round_one, square"):
        reg["round_on"]
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(name="square")(lambda x: x)


def test_a_new_loss_scheme_is_one_function(capsys):
    from bench.run import parse_args
    from bench.training.losses import MultiAttributeLoss
    from bench.training.schemes import LOSSES, Treatment
    from bench.tuning.spaces import SPACES
    from zoo.recipes import Recipe

    def only_first_class(n, recipe):
        """weight only class 0"""
        return Treatment(np.array([1.0] + [0.0] * (len(n) - 1)))

    with pytest.raises(ValueError, match="recipe loss='only_first_class' is not one of"):
        Recipe(loss="only_first_class")
    with registered(LOSSES, only_first_class):
        assert Recipe(loss="only_first_class").loss == "only_first_class"  # recipe validation reads the registry
        assert "only_first_class: weight only class 0" in help_text(parse_args, capsys)
        assert parse_args(["--loss", "only_first_class"]).loss == "only_first_class"
        # the loss applies it: class-1 samples cost nothing, class-0 samples cost their cross-entropy x N / n_0
        loss = MultiAttributeLoss([[3, 1]], "only_first_class")
        z = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
        per = loss.per_attribute([z], torch.tensor([[0], [1]]))
        assert per.item() == pytest.approx((4 / 3 * np.log(2) + 0) / 2)
        # and the default search space proposes it
        import optuna
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        seen = {SPACES["default"](study.ask(), Recipe())["loss"] for _ in range(60)}
        assert "only_first_class" in seen
    assert "only_first_class" not in help_text(parse_args, capsys)


def test_a_new_resize_policy_is_one_function(tiny_root, tmp_path, capsys):
    from bench.data import open_dataset
    from bench.data.images import load_images
    from bench.data.resize import RESIZE
    from bench.images import main as images_main
    from zoo.recipes import Recipe

    def grey(im, size):
        """a flat grey square"""
        return np.full((size, size, 3), 128, np.uint8)

    with registered(RESIZE, grey):
        assert Recipe(resize="grey").resize == "grey"
        assert "grey: a flat grey square" in help_text(images_main, capsys)
        files = open_dataset(tiny_root, check_images=False).files("val")[:3]
        assert (load_images(files, 16, "grey", tmp_path, progress=False) == 128).all()
    with pytest.raises(ValueError, match="unknown resize policy 'grey'"):
        load_images(files, 16, "grey", tmp_path, progress=False)


def test_new_ensemble_weighting_combiner_and_decision_are_used(demo_runs, tmp_path, capsys):
    import json

    from bench.ensemble import main as ensemble_main
    from bench.ensembling.combiners import COMBINERS
    from bench.ensembling.decisions import DECISIONS
    from bench.ensembling.weightings import WEIGHTINGS

    def first_only(probs, labels, num_classes, method="mean", per_attribute=False, seed=0, metric="overall"):
        """all weight on the first member"""
        return np.eye(len(probs))[0]

    def maximum(stack, w):
        """the largest probability of any weighted member, renormalised"""
        m = (stack * (w[:, None, None] > 0)).amax(0)  # torch operations (combiners.py)
        return m / m.sum(1, keepdims=True)

    def always_zero(probs, num_classes, prior=None, params=None):
        """class 0 for every attribute"""
        return np.zeros((len(probs), len(num_classes)), int)

    runs = tmp_path / "runs"
    shutil.copytree(demo_runs, runs)
    with registered(WEIGHTINGS, first_only), registered(COMBINERS, maximum), registered(DECISIONS, always_zero):
        text = help_text(ensemble_main, capsys)
        for line in ("first_only: all weight on the first member", "maximum: the largest probability",
                     "always_zero: class 0 for every attribute"):
            assert line in text
        ensemble_main(["--runs-dir", str(runs), "--out", str(tmp_path / "sub"), "--no-report", "--weights",
                       "first_only", "--combine", "maximum", "--decision", "always_zero"])
    entry = json.loads((runs / "_ensembles/ensemble/run.json").read_text())
    assert entry["weights"] == [1.0, 0.0] and entry["decision"] == "always_zero"
    assert (np.loadtxt(tmp_path / "sub/prediction.txt", dtype=int) == 0).all()
    labels = np.load(runs / "default/resnet18/probs_val.npz")["labels"]
    assert entry["val"]["overall_acc"] == pytest.approx((labels == 0).mean())  # the rule also scored val


def test_a_new_tta_transform_is_one_function(capsys):
    from bench.ensemble import main as ensemble_main
    from bench.ensembling.views import VIEWS, parse_view, view_images

    def invert(x, arg=None):
        """photographic negative"""
        return 255 - x

    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    with registered(VIEWS, invert):
        assert "invert: photographic negative" in help_text(ensemble_main, capsys)
        assert parse_view("invert+flip") == [("invert", None), ("flip", None)]
        assert torch.equal(view_images(x, "invert+flip"), 255 - x.float().flip(3))
    with pytest.raises(ValueError, match="unknown TTA transform 'invert'"):
        parse_view("invert")
    assert parse_view("crop0.8+flip") == [("crop", 0.8), ("flip", None)]


def test_a_new_search_space_is_one_function(tiny_root, tmp_path, monkeypatch, capsys):
    from bench.tune import main as tune_main
    from bench.tuning.spaces import SPACES
    from test_tune import args, fake_training

    def tiny_lr(trial, base):
        """lr between 1e-4 and 2e-4"""
        return {"lr": trial.suggest_float("lr", 1e-4, 2e-4)}

    fake_training(monkeypatch)
    with registered(SPACES, tiny_lr):
        assert "tiny_lr: lr between 1e-4 and 2e-4" in help_text(tune_main, capsys)
        study = tune_main(args(tiny_root, f"sqlite:///{tmp_path / 's.db'}", "t", 3, 1, "--space", "tiny_lr"))
    assert all(set(t.params) == {"lr"} and 1e-4 <= t.params["lr"] <= 2e-4 for t in study.trials)


@pytest.mark.parametrize("base_name", ["finetune", "scratch"])
def test_every_search_space_proposes_valid_recipes(base_name):
    """Whatever a space proposes, from either init-dependent recipe, is a recipe the trainer accepts; the finetune
    space keeps lr within base/3 .. base x 3 and the backbone's lr scale within 0.05 .. 1."""
    import optuna
    from bench.tuning.spaces import SPACES
    from zoo.recipes import get_recipe

    base = get_recipe(base_name)
    for name in SPACES.names():
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
        for _ in range(40):
            params = SPACES[name](study.ask(), base)
            recipe = base.updated(**params)  # raises on any out-of-range or unknown field
            assert set(params) <= set(recipe.to_dict())
            if name == "finetune":
                assert base.lr / 3 * (1 - 1e-9) <= recipe.lr <= base.lr * 3 * (1 + 1e-9)
                assert 0.05 * (1 - 1e-9) <= recipe.backbone_lr_scale <= 1.0
