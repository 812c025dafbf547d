"""Faster forms of a network that compute the same numbers: TensorFlow 'SAME' padding without a padded copy of the
input, and BatchNorm folded into the convolution before it for inference.

**SAME padding** (timm's `tf_*` models: `tf_efficientnet_lite*`, `tf_efficientnetv2_*`). timm's `Conv2dSame` pads
the input of every strided convolution with `F.pad` at each call: a copy of the activation, which moreover comes
back in NCHW whatever the input's layout (so a channels_last network reorders it again inside the convolution, and
its gradient flows back in the other layout). For stride s and kernel k the padding of a side of n pixels is
(lo, hi) with hi = lo or lo + 1. With hi = lo it is a convolution's own symmetric padding lo. With hi = lo + 1 it is
the same as a convolution whose kernel has one zero tap prepended (k + 1 taps, the first 0) and symmetric padding
hi: output i then sees input positions i*s - hi .. i*s - hi + k, and its k real taps the positions i*s - lo ..
i*s - lo + k - 1, exactly the SAME window; the output size is floor((n + lo + hi - k) / s) + 1 in both. So
`SamePadConv2d` pads the (tiny) weight instead of the activation: no copy, the layout kept, the same parameters and
state_dict keys as Conv2dSame (checkpoints load both ways), the same numbers (tests/test_cpu_speed.py). The padding
follows from the input's size at each call (a few integer operations), so any input size is right.
Measured (issue #42; 2 contended CPU cores, one thread, batch 32, the five strided convolutions of
tf_efficientnet_lite0 at 128 px, best of 3): inference 41.6 ms (Conv2dSame) -> 10.5 ms (this form; a ZeroPad2d +
convolution form: 38.6 ms; the symmetric-padding `efficientnet_lite0` 7.3 ms); training step 164 -> 146 ms.
Dilated convolutions keep the padded copy (the zero-tap identity needs dilation 1), and so do an ONNX export and a
FLOP count (see SamePadConv2d.forward).

**BatchNorm folding** (inference only): a BatchNorm in eval mode is a per-channel affine map, so a convolution
followed only by it is one convolution with scaled weights and a shifted bias (torch.nn.utils.fusion). `fold_batchnorm`
finds such pairs in the traced graph (torch.fx) of a copy of the network, timm's BatchNormAct2d included (its
activation stays); a network that cannot be traced is returned unfolded. Equal to eager evaluation within float
rounding (tests/test_cpu_speed.py).
"""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from torch import fx, nn
from timm.layers.conv2d_same import Conv2dSame
from timm.layers.norm_act import BatchNormAct2d
from timm.layers.padding import get_same_padding


def same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """(lo, hi) TensorFlow SAME padding of a side of `size` pixels (timm's rule, padding.py `pad_same`)."""
    total = get_same_padding(size, kernel, stride, dilation)
    return total // 2, total - total // 2


class SamePadConv2d(nn.Conv2d):
    """Conv2dSame's numbers without padding the input (module docstring); the same parameters and state_dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        top, bottom = same_pads(x.shape[-2], kh, sh, dh)
        left, right = same_pads(x.shape[-1], kw, sw, dw)
        if dh != 1 or dw != 1 or _pad_input or torch.onnx.is_in_onnx_export():
            # the zero-tap identity needs dilation 1; torch.onnx's optimiser (torch 2.14, onnxscript 0.7) drops the
            # padded weight of a whole tf_ network from the graph, while onnxruntime fuses a Pad into the
            # convolution anyway; and FLOP counts are of the k x k kernels (`padded_input`): pad the input as timm
            x = F.pad(x, (left, right, top, bottom))
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        weight = self.weight
        if bottom != top or right != left:  # one zero tap before the kernel on each side padded asymmetrically
            weight = F.pad(weight, (right - left, 0, bottom - top, 0))
        return F.conv2d(x, weight, self.bias, self.stride, (bottom, right), 1, self.groups)


_pad_input = False  # True inside padded_input()


@contextlib.contextmanager
def padded_input():
    """Inside this block SamePadConv2d pads its input as timm does (the same numbers): a FLOP counter then counts the
    k x k convolutions the model defines, not the zero taps (3-4% more for tf_ models)."""
    global _pad_input
    before, _pad_input = _pad_input, True
    try:
        yield
    finally:
        _pad_input = before


def _same_pad_conv(conv: Conv2dSame) -> SamePadConv2d:
    new = SamePadConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                        conv.groups, conv.bias is not None, device="meta")
    new.weight, new.bias = conv.weight, conv.bias  # the same Parameters: nothing copied, optimizer state intact
    new.train(conv.training)
    return new


def fast_same_padding(module: nn.Module) -> int:
    """Replace every timm Conv2dSame in `module` (in place) by SamePadConv2d; returns how many."""
    n = 0
    for name, child in list(module.named_children()):
        if type(child) is Conv2dSame:
            setattr(module, name, _same_pad_conv(child))
            n += 1
        else:
            n += fast_same_padding(child)
    return n


# --- BatchNorm folding ---------------------------------------------------------------------------------------------
FOLDABLE_CONVS = (nn.Conv2d, Conv2dSame, SamePadConv2d)  # exactly these: their forward uses weight and bias as given


class _Tracer(fx.Tracer):
    """Convolutions and BatchNorms stay single nodes (call_module), so pairs can be found and folded."""

    def is_leaf_module(self, m: nn.Module, name: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) or super().is_leaf_module(m, name)


def _bn_replacement(bn: nn.Module) -> nn.Module | None:
    """What stays of a BatchNorm once folded: nothing (nn.BatchNorm2d), timm's BatchNormAct2d's dropout and
    activation; None for any other kind (not folded)."""
    if bn.running_mean is None or bn.running_var is None:
        return None
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    if isinstance(bn, BatchNormAct2d) and type(bn).forward is BatchNormAct2d.forward:
        return nn.Sequential(bn.drop, bn.act)
    return None


def fold_batchnorm(module: nn.Module, inplace: bool = False) -> tuple[nn.Module, int]:
    """(an eval-mode module computing what `module` computes in eval mode, with each BatchNorm that follows a
    convolution folded into it; how many were folded). `module` itself is not changed unless `inplace`. A module
    torch.fx cannot trace comes back unfolded."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights
    module = (module if inplace else copy.deepcopy(module)).eval()
    try:
        graph = _Tracer().trace(module)
    except Exception:  # data-dependent control flow (e.g. vgg's pre-logits): eager, unfolded
        return module, 0
    gm = fx.GraphModule(module, graph)
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        bn, prev = gm.get_submodule(node.target), node.args[0]
        if not isinstance(bn, nn.BatchNorm2d) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        conv = gm.get_submodule(prev.target)
        rest = _bn_replacement(bn)
        if type(conv) not in FOLDABLE_CONVS or rest is None or conv.weight.shape[0] != bn.num_features:
            continue
        with torch.no_grad():
            conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                          bn.eps, bn.weight, bn.bias)
        if isinstance(rest, nn.Identity):
            node.replace_all_uses_with(prev)
            gm.graph.erase_node(node)
        else:
            gm.set_submodule(node.target, rest)
        folded += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval(), folded


def inference_copy(net: nn.Module, memory_format=torch.channels_last) -> tuple[nn.Module, int]:
    """(an eval-mode copy of a MultiHeadNet (zoo/multihead.py) for inference: its backbone's BatchNorms folded, its
    weights in `memory_format`; how many BatchNorms were folded). The network itself is not changed."""
    no_grads = {id(p.grad): None for p in net.parameters() if p.grad is not None}  # the copy needs no gradients
    new = copy.deepcopy(net, no_grads).eval()
    new.backbone, folded = fold_batchnorm(new.backbone, inplace=True)
    return new.to(memory_format=memory_format), folded
