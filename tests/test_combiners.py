"""One definition of a combination (bench/ensembling/combiners.py `combine`): for every registered combiner, the
numpy path (bench.ensemble, bench.predict, cached teacher targets), the torch path (the online teacher) and the
exported ONNX graph (bench.export's PlanGraph, in onnxruntime) give the same probabilities on random inputs."""
import numpy as np
import pytest
import torch
from torch import nn

from bench.ensembling.combiners import COMBINERS, combine

K = (3, 4, 2)


def random_members(rng, m=3, n=5):
    """m members' (n, sum K) probabilities, each attribute's block a random distribution."""
    return [np.concatenate([rng.dirichlet(np.ones(k), n) for k in K], 1) for _ in range(m)]


def by_hand(name, members, w):
    """The two built-in combiners written out per attribute, image and class (weights normalised per attribute)."""
    out = np.zeros_like(members[0])
    starts = np.cumsum((0, *K))
    for a in range(len(K)):
        wa = w[:, a] / w[:, a].sum()
        cols = slice(starts[a], starts[a + 1])
        if name == "mean":
            out[:, cols] = sum(wi * p[:, cols] for wi, p in zip(wa, members))
        else:
            g = np.exp(sum(wi * np.log(np.clip(p[:, cols], 1e-8, 1)) for wi, p in zip(wa, members)))
            out[:, cols] = g / g.sum(1, keepdims=True)
    return out


@pytest.mark.parametrize("name", ["mean", "geometric"])
def test_combine_is_the_formula_per_attribute(name):
    rng = np.random.default_rng(0)
    members = random_members(rng)
    w = rng.uniform(0.1, 2.0, (3, len(K)))  # per attribute, not normalised
    assert combine(members, w, K, name) == pytest.approx(by_hand(name, members, w), abs=1e-12)
    flat = rng.uniform(0.1, 2.0, 3)  # (M,): the same weights for every attribute
    assert combine(members, flat, K, name) == pytest.approx(by_hand(name, members, np.repeat(flat[:, None], 3, 1)))
    assert combine(members[:1], w[:1], K, name) is members[0]  # one member is its own combination


class Member(nn.Module):
    """A stand-in network: per-attribute logits, a fixed random linear function of each image's mean colour."""

    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("a", torch.randn(3, sum(K), generator=g) * 3)

    def forward(self, x):
        z = (x.float().mean((2, 3)) / 255) @ self.a
        return list(torch.split(z, list(K), 1))


@pytest.mark.parametrize("name", COMBINERS.names())
def test_numpy_torch_and_onnx_combinations_agree(name, tmp_path):
    """Every registered combiner: `combine` on numpy arrays, on float32 tensors, and traced inside bench.export's
    graph (three members, per-attribute weights) run in onnxruntime, agree."""
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install -e '.[onnx]'")
    from bench.inference.onnx_export import PlanGraph, save_graph
    from bench.inference.predict import Plan
    rng = np.random.default_rng(1)
    w = rng.uniform(0.1, 2.0, (3, len(K)))
    plan = Plan(source="ensemble t", labels=["a/m", "b/m", "c/m"], inputs=[(8, "stretch")] * 3, views=["plain"],
                weights=w, combine=name, decision="argmax", params={}, counts=None, metric="overall",
                attributes=("x", "y", "z"), class_names=[[f"c{i}" for i in range(k)] for k in K], num_classes=K)
    members = [Member(seed) for seed in range(3)]
    graph = PlanGraph(plan, [[m] for m in members]).eval()
    images = torch.from_numpy(rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
    with torch.no_grad():
        probs = [torch.cat([z.softmax(-1) for z in m(images.permute(0, 3, 1, 2).float())], 1) for m in members]
        eager = torch.cat(graph(images), 1).numpy()
    want = combine([p.double().numpy() for p in probs], w, K, name)  # the numpy path, float64
    torch_path = combine(probs, torch.tensor(w), K, name)
    assert torch_path.dtype == torch.float32 and torch_path.numpy() == pytest.approx(want, abs=1e-6)
    assert eager == pytest.approx(want, abs=1e-6)
    save_graph(graph, plan, tmp_path / "g.onnx", images[:2])
    session = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    got = np.concatenate(session.run(None, {"images": images.numpy()}), 1)
    assert got == pytest.approx(want, abs=1e-5)
    for block in np.split(got, np.cumsum(K)[:-1], 1):
        assert block.sum(1) == pytest.approx(np.ones(len(images)), abs=1e-5)
