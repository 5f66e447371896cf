"""Mobile CNNs in train mode through both entry points, against eager PyTorch: two SGD
steps each, with the loss and every gradient compared at each step, and afterwards every
parameter and BatchNorm buffer (running_mean, running_var, num_batches_tracked), against
eager fp32 and a float64 copy; the fused kernel counts, so a fall back to "nothing fused"
fails.

The blocks are built from torch.nn, not taken from timm: timm 1.0 imports torchvision at
``import timm`` (timm.layers), and the registry's torchvision for torch 2.13 is a CUDA
build whose C extension does not load with the CPU torch (``operator torchvision::nms
does not exist``); installed, it also breaks ``import transformers``. So:

* an EfficientNet-B0-style network: stem conv-BN-SiLU, MBConv blocks (1x1 expand,
  depthwise 3x3, squeeze-excite with SiLU and a sigmoid gate, 1x1 project, residual),
  head conv-BN-SiLU, pooling, classifier (timm's ``efficientnet_b0`` layout, scaled down);
* a MobileNetV3-style network: hardswish activations, squeeze-excite with ReLU and a
  hardsigmoid gate, ReLU blocks without SE, a hardswish classifier layer
  (torchvision's ``mobilenet_v3_small`` layout, scaled down).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from _common import (
    ENTRIES,
    assert_fused,
    assert_grads_like_eager,
    assert_like_eager,
    assert_state_like_eager,
    compile_with,
    seeded,
    twins,
)

pytestmark = pytest.mark.cpu_only  # CPU tensors (interpreter kernels)

BATCH, IMAGE, CLASSES, STEPS = 4, 16, 10, 2


def conv_bn_act(cin, cout, kernel=1, stride=1, groups=1, act=nn.SiLU):
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act is not None else nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """x * gate(expand(act(reduce(mean over H, W of x)))): the gate broadcasts over H, W."""

    def __init__(self, channels, reduced, act=nn.SiLU, gate=nn.Sigmoid):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = act()
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.gate = gate()

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


class InvertedResidual(nn.Module):
    """MBConv (EfficientNet) / bneck (MobileNetV3): 1x1 expand, depthwise, optional SE,
    1x1 project (BN, no activation), residual when the shape is kept."""

    def __init__(self, cin, cout, expand, stride, act=nn.SiLU, se=None):
        super().__init__()
        mid = cin * expand
        self.expand = conv_bn_act(cin, mid, act=act) if expand != 1 else nn.Identity()
        self.dw = conv_bn_act(mid, mid, 3, stride, groups=mid, act=act)
        self.se = se(mid) if se is not None else nn.Identity()
        self.project = conv_bn_act(mid, cout, act=None)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.residual else y


class TinyEfficientNet(nn.Module):
    def __init__(self):
        super().__init__()
        def se(cin):  # EfficientNet's SE squeezes to se_ratio 0.25 of the block's input channels
            return lambda mid: SqueezeExcite(mid, max(1, cin // 4))
        self.stem = conv_bn_act(3, 8, 3, 2)
        self.blocks = nn.Sequential(
            InvertedResidual(8, 8, 1, 1, se=se(8)),      # EfficientNet's first stage: depthwise-separable
            InvertedResidual(8, 16, 4, 2, se=se(8)),     # expand 4, stride 2: no residual
            InvertedResidual(16, 16, 4, 1, se=se(16)),   # residual
        )
        self.head = conv_bn_act(16, 32)
        self.classifier = nn.Linear(32, CLASSES)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(x.mean((2, 3)))


# once everything fuses, kernels that cannot merge with one another (each sits between
# convolutions, a BatchNorm or a mean):
#   stem BN->SiLU 1; block 1 (no expand): dw SiLU, SE SiLU, SE sigmoid gate, residual add = 4;
#   block 2: expand SiLU, dw SiLU, SE SiLU, SE gate = 4; block 3: those 4 + residual add = 5;
#   head SiLU 1
EFFICIENTNET_MIN_FORWARD = 1 + 4 + 4 + 5 + 1
# backward: the same less the two residual adds (their gradient passes through)
EFFICIENTNET_MIN_BACKWARD = EFFICIENTNET_MIN_FORWARD - 2


class TinyMobileNetV3(nn.Module):
    def __init__(self):
        super().__init__()

        def se(mid):  # MobileNetV3: ReLU inside, hardsigmoid gate, squeeze to mid / 4
            return SqueezeExcite(mid, max(8, mid // 4), act=nn.ReLU, gate=nn.Hardsigmoid)
        self.stem = conv_bn_act(3, 16, 3, 2, act=nn.Hardswish)
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1, 1, act=nn.ReLU, se=se),        # dw + SE, ReLU, residual
            InvertedResidual(16, 24, 4, 2, act=nn.ReLU),               # no SE, stride 2
            InvertedResidual(24, 24, 3, 1, act=nn.Hardswish, se=se),   # hardswish + SE, residual
        )
        self.head = conv_bn_act(24, 48, act=nn.Hardswish)
        self.classifier = nn.Sequential(nn.Linear(48, 64), nn.Hardswish(), nn.Linear(64, CLASSES))

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(x.mean((2, 3)))


# stem BN->hardswish 1; block 1: dw ReLU, SE ReLU, SE hardsigmoid gate, residual = 4;
# block 2: expand ReLU, dw ReLU = 2; block 3: expand hardswish, dw hardswish, SE ReLU,
# SE gate, residual = 5; head hardswish 1; classifier Linear -> hardswish (an epilogue) 1
MOBILENET_MIN_FORWARD = 1 + 4 + 2 + 5 + 1 + 1
MOBILENET_MIN_BACKWARD = MOBILENET_MIN_FORWARD - 2  # residual adds: no backward kernel


def images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 3, IMAGE, IMAGE, generator=g), torch.randint(0, CLASSES, (BATCH,), generator=g)


MODELS = {
    "efficientnet": (TinyEfficientNet, EFFICIENTNET_MIN_FORWARD, EFFICIENTNET_MIN_BACKWARD, ("sigmoid",)),
    "mobilenetv3": (TinyMobileNetV3, MOBILENET_MIN_FORWARD, MOBILENET_MIN_BACKWARD, ()),
}


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("name", list(MODELS))
def test_train_mode_two_steps_match_eager(name, entry):
    make, min_forward, min_backward, fused_ops = MODELS[name]
    model, eager, ref64 = twins(seeded(make))
    assert model.training
    compiled = compile_with(entry, model)
    x, y = images()
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (model, eager, ref64)]
    for step in range(STEPS):
        outs, losses = [], []
        for m, inp, opt in zip((compiled, eager, ref64), (x, x, x.double()), opts):
            opt.zero_grad()
            out = m(inp)
            loss = nn.functional.cross_entropy(out, y)
            loss.backward()
            outs.append(out)
            losses.append(loss)
        assert_like_eager(f"step {step} logits", *outs)
        assert_like_eager(f"step {step} loss", *losses)
        assert_grads_like_eager(model, eager, ref64)
        for opt in opts:
            opt.step()
    # every parameter, and the BatchNorm running_mean/running_var/num_batches_tracked
    assert_state_like_eager(model, eager, ref64, what=f"after {STEPS} steps:")
    assert all(bn.num_batches_tracked.item() == STEPS for bn in model.modules() if isinstance(bn, nn.BatchNorm2d))

    assert_fused(entry, compiled, (x,), forward=min_forward, backward=min_backward, containing=fused_ops)
