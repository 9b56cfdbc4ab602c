"""The CIFAR architectures of the knowledge-distillation literature, written for lskd-bench.

They follow the definitions of CRD's RepDistiller and mdistiller (megvii-research/mdistiller@a08d46f,
``mdistiller/models/cifar/*.py``): same layers, same order, same module names, so ``state_dict()`` keys
match the widely shared ``cifar_teachers`` checkpoints (``{"model": state_dict, ...}``, e.g.
``resnet32x4_vanilla/ckpt_epoch_240.pth``) and ``--teacher-checkpoint`` loads them as they are. The
weight initialisation follows each file too. What differs: ``forward`` returns the logits only; the
intermediate feature maps that feature-distillation methods read are captured by forward hooks at the modules
named in each class's ``feature_stages`` (``lskd_bench/outputs.py``; the tensors of RepDistiller's
``is_feat=True``: the stem ``stage0``, the stages ``stage1..N``), so the activations after a stem or a stage are
parameter-free ``nn.ReLU`` modules where the original applies ``F.relu`` (same values, same ``state_dict``). The
pre-activations of ``is_feat=True, preact=True`` (``preact_stageK``) are the input of the stage's last activation,
or, where RepDistiller takes them elsewhere (WRN, ShuffleNet-V2, MobileNet-V2), of the module named in the
class's ``feature_preacts`` (a parameter-free ``PreActivation`` where the original assembles one from two
tensors). Every model offers ``features(x)`` (the pooled penultimate vector) and ``head`` (its final linear
layer), the interface of ``ClassifierNet`` that the analysis reads.

Also here: MobileNet-V1 for 224 x 224 ImageNet as mdistiller defines it (models/imagenet/mobilenetv1.py),
the student of its ResNet-50 -> MobileNet-V1 pair.
"""

from __future__ import annotations

import math
from functools import partial
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn


class CifarNet(nn.Module):
    """``forward(x) = head(features(x))``; subclasses name their final linear layer ``head_name``."""

    head_name = "fc"

    @property
    def head(self) -> nn.Linear:
        h = getattr(self, self.head_name)
        return h[-1] if isinstance(h, nn.Sequential) else h

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.head_name)(self.features(x))


class PreActivation(nn.Module):
    """A parameter-free no-op that marks a pre-activation the forward never forms as one tensor: it is called with
    its parts, and ``lskd_bench.outputs`` (a forward pre-hook, only while a method reads it) takes their channel
    concatenation. No weights, no ``state_dict`` entries."""

    def forward(self, *parts: torch.Tensor) -> None:
        return None


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def _init_msra(model: nn.Module, linear_std: float | None = None) -> None:
    """RepDistiller's VGG / WRN / MobileNet-V2 init: conv N(0, sqrt(2 / (k*k*out))), BN (1, 0), linear bias 0
    (and weight N(0, linear_std) where given)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                m.weight.data.normal_(0, linear_std)
            m.bias.data.zero_()


def _init_kaiming(model: nn.Module) -> None:
    """RepDistiller's ResNet init: conv Kaiming-normal (fan_out, relu), BN (1, 0)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


# ---------------------------------------------------------------------------------------------- ResNet
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, planes, stride), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv3x3(planes, planes), nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))  # its input: the pre-activation


class ResNet(CifarNet):
    """CIFAR ResNet of He et al. (2016, sec. 4.2): 3 stages of (depth - 2) / 6 basic blocks at 32/16/8 px;
    ``widths`` = (stem, stage 1, 2, 3): (16, 16, 32, 64) for resnet20/32/56/110, 4x for resnet8x4/32x4."""

    feature_stages: ClassVar[dict[str, str]] = {
        "stage0": "relu",
        "stage1": "layer1",
        "stage2": "layer2",
        "stage3": "layer3",
    }

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100):
        super().__init__()
        assert (depth - 2) % 6 == 0, "depth must be 6n + 2"
        n = (depth - 2) // 6
        self.inplanes = widths[0]
        self.conv1, self.bn1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._layer(widths[1], n, 1)
        self.layer2 = self._layer(widths[2], n, 2)
        self.layer3 = self._layer(widths[3], n, 2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(widths[3], num_classes)
        _init_kaiming(self)

    def _layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, down)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.avgpool(x).flatten(1)


# ------------------------------------------------------------------------------- ResNet-50 (resnetv2.py)
class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv3x3(planes, planes, stride), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != out:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))
        self.relu = nn.ReLU()  # the block's last activation: its input is the pre-activation

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNet50(CifarNet):
    """The ImageNet ResNet-50 layout on 32 x 32 inputs (3x3 stem, no max-pool), as CRD's resnetv2.py."""

    head_name = "linear"
    feature_stages: ClassVar[dict[str, str]] = {
        "stage0": "relu",
        "stage1": "layer1",
        "stage2": "layer2",
        "stage3": "layer3",
        "stage4": "layer4",
    }

    def __init__(self, num_classes: int = 100):
        super().__init__()
        self.in_planes = 64
        self.conv1, self.bn1 = _conv3x3(3, 64), nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.layer1 = self._layer(64, 3, 1)
        self.layer2 = self._layer(128, 4, 2)
        self.layer3 = self._layer(256, 6, 2)
        self.layer4 = self._layer(512, 3, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(2048, num_classes)
        _init_kaiming(self)

    def _layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(_Bottleneck(self.in_planes, planes, s))
            self.in_planes = planes * 4
        return nn.Sequential(*layers)

    def features(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)


# ------------------------------------------------------------------------------------------ Wide ResNet
class _WideBlock(nn.Module):
    """Pre-activation block of Zagoruyko & Komodakis; a block that changes width pre-activates the input
    and projects the pre-activated input with ``convShortcut`` (as the reference code)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        pre = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
        return out + (x if self.equal else self.convShortcut(pre))


class _NetworkBlock(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(
            *[_WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)]
        )

    def forward(self, x):
        return self.layer(x)


class WideResNet(CifarNet):
    """WRN-depth-k: 3 groups of (depth - 4) / 6 pre-activation blocks of width 16k / 32k / 64k. A group ends in a
    sum (its blocks pre-activate their input), so a stage's pre-activation is the next BN's output, the input of
    the ReLU after it, as RepDistiller's wrn.py forward(preact=True) (b84f547 models/wrn.py:118-121:
    ``block2.layer[0].bn1(f1)``, ``block3.layer[0].bn1(f2)``, ``bn1(f3)``) and OFD's ``get_bn_before_relu``.
    The values are the same; RepDistiller gets them by calling those BNs a second time, which in training mode
    also updates their running statistics a second time per step (its AB student): lskd-bench reads what the
    forward computes and does not repeat that update."""

    feature_stages: ClassVar[dict[str, str]] = {
        "stage0": "conv1",
        "stage1": "block1",
        "stage2": "block2",
        "stage3": "block3",
    }
    feature_preacts: ClassVar[dict[str, str]] = {
        "stage1": "block2.layer.0.relu1",
        "stage2": "block3.layer.0.relu1",
        "stage3": "relu",
    }

    def __init__(self, depth: int, widen: int, num_classes: int = 100):
        super().__init__()
        assert (depth - 4) % 6 == 0, "depth must be 6n + 4"
        n = (depth - 4) // 6
        ch = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.block1 = _NetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = _NetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = _NetworkBlock(n, ch[2], ch[3], 2)
        self.bn1, self.relu = nn.BatchNorm2d(ch[3]), nn.ReLU(inplace=True)
        self.fc = nn.Linear(ch[3], num_classes)
        _init_msra(self)

    def features(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return F.avg_pool2d(self.relu(self.bn1(x)), 8).flatten(1)


# ------------------------------------------------------------------------------------------------- VGG
VGG_CFG = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


class VGG(CifarNet):
    """CRD's CIFAR VGG with batch norm (``vgg*_bn``): five conv blocks (each ends before its last ReLU), 2x2
    max-pools after the first three, global average pooling, one linear layer."""

    head_name = "classifier"
    feature_stages: ClassVar[dict[str, str]] = {f"stage{i}": f"relu{i}" for i in range(5)}

    def __init__(self, cfg: list[list[int]], num_classes: int = 100):
        super().__init__()
        cins = [3] + [c[-1] for c in cfg[:-1]]
        for i, (c, cin) in enumerate(zip(cfg, cins)):
            setattr(self, f"block{i}", self._block(c, cin))
            setattr(self, f"relu{i}", nn.ReLU())  # each block's last activation (input: the pre-activation)
        self.pool0, self.pool1, self.pool2, self.pool3 = (nn.MaxPool2d(2, 2) for _ in range(4))
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(512, num_classes)
        _init_msra(self, linear_std=0.01)

    @staticmethod
    def _block(cfg: list[int], cin: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for v in cfg:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            cin = v
        return nn.Sequential(*layers[:-1])

    def features(self, x):
        h = x.shape[2]
        x = self.pool0(self.relu0(self.block0(x)))
        x = self.pool1(self.relu1(self.block1(x)))
        x = self.pool2(self.relu2(self.block2(x)))
        x = self.relu3(self.block3(x))
        if h == 64:
            x = self.pool3(x)
        x = self.relu4(self.block4(x))
        return self.pool4(x).flatten(1)


# ------------------------------------------------------------------------------------------ ShuffleNets
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class _ShuffleV1Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        self.stride, mid = stride, cout // 4
        self.g = 1 if cin == 24 else groups
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, groups=self.g, bias=False), nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()
        self.relu = nn.ReLU()  # the unit's last activation: its input is the pre-activation (no weights)

    def forward(self, x):
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.g)
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        res = self.shortcut(x)
        return self.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(CifarNet):
    """ShuffleNet-V1 (g = 3) for 32 x 32 inputs, as CRD's ShuffleNetv1.py: a 1x1 stem and three stages of
    4 / 8 / 4 units of 240 / 480 / 960 channels, each stage opening with a stride-2 unit. A stage's
    pre-activation is its last unit's sum (or concatenation) before the final ReLU (b84f547 ShuffleNetv1.py:
    the last Bottleneck's ``preact``, returned as ``f1_pre..f3_pre``, :110-111)."""

    head_name = "linear"
    feature_stages: ClassVar[dict[str, str]] = {
        "stage0": "relu",
        "stage1": "layer1",
        "stage2": "layer2",
        "stage3": "layer3",
    }

    def __init__(self, num_classes: int = 100, out_planes=(240, 480, 960), num_blocks=(4, 8, 4), groups: int = 3):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 24, 1, bias=False), nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        self.in_planes = 24
        self.layer1 = self._layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._layer(out_planes[2], num_blocks[2], groups)
        self.linear = nn.Linear(out_planes[2], num_classes)
        self.feature_preacts = {f"stage{i + 1}": f"layer{i + 1}.{n - 1}.relu" for i, n in enumerate(num_blocks)}

    def _layer(self, cout: int, n: int, groups: int) -> nn.Sequential:
        layers = []
        for i in range(n):
            cat = self.in_planes if i == 0 else 0
            layers.append(_ShuffleV1Block(self.in_planes, cout - cat, 2 if i == 0 else 1, groups))
            self.in_planes = cout
        return nn.Sequential(*layers)

    def features(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return F.avg_pool2d(x, 4).flatten(1)


class _ShuffleV2Block(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        c = channels // 2
        self.conv1, self.bn1 = nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False), nn.BatchNorm2d(c)
        self.conv3, self.bn3 = nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c)
        self.preact = PreActivation()  # cat([x1, bn3 output]): the unit's pre-activation, unshuffled

    def forward(self, x):
        c = x.shape[1] // 2
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(x2)))
        pre = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        self.preact(x1, pre)
        return channel_shuffle(torch.cat([x1, F.relu(pre)], 1), 2)


class _ShuffleV2Down(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.conv1, self.bn1 = nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False), nn.BatchNorm2d(cin)
        self.conv2, self.bn2 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv4, self.bn4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False), nn.BatchNorm2d(mid)
        self.conv5, self.bn5 = nn.Conv2d(mid, mid, 1, bias=False), nn.BatchNorm2d(mid)

    def forward(self, x):
        a = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        b = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        b = F.relu(self.bn5(self.conv5(b)))
        return channel_shuffle(torch.cat([a, b], 1), 2)


class ShuffleNetV2(CifarNet):
    """ShuffleNet-V2 1x for 32 x 32 inputs, as CRD's ShuffleNetv2.py: a 1x1 stem, three stages (a stride-2
    unit then 3 / 7 / 3 units of 116 / 232 / 464 channels), a 1x1 conv to 1024, average pooling. A stage's
    pre-activation is its last unit's ``cat([x1, bn3(...)])`` before the channel shuffle (b84f547 ShuffleNetv2.py:
    the last BasicBlock's ``preact``, returned as ``f1_pre..f3_pre``, :156-157), read at its ``preact`` marker."""

    head_name = "linear"
    feature_stages: ClassVar[dict[str, str]] = {
        "stage0": "relu",
        "stage1": "layer1",
        "stage2": "layer2",
        "stage3": "layer3",
    }

    def __init__(self, num_classes: int = 100, out_channels=(116, 232, 464, 1024), num_blocks=(3, 7, 3)):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 24, 1, bias=False), nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        self.in_channels = 24
        self.layer1 = self._layer(out_channels[0], num_blocks[0])
        self.layer2 = self._layer(out_channels[1], num_blocks[1])
        self.layer3 = self._layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], 1, 1, 0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.relu2 = nn.ReLU()  # F.relu as a module: its output is the pooled map (lskd_bench.outputs)
        self.linear = nn.Linear(out_channels[3], num_classes)
        self.feature_preacts = {f"stage{i + 1}": f"layer{i + 1}.{n}.preact" for i, n in enumerate(num_blocks)}

    def _layer(self, cout: int, n: int) -> nn.Sequential:
        layers: list[nn.Module] = [_ShuffleV2Down(self.in_channels, cout)]
        layers += [_ShuffleV2Block(cout) for _ in range(n)]
        self.in_channels = cout
        return nn.Sequential(*layers)

    def features(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, 4).flatten(1)


# ------------------------------------------------------------------------------------------ MobileNet-V2
def _conv_bn_relu(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hid = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hid, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hid),
            nn.ReLU(inplace=True),
            nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False),
            nn.BatchNorm2d(hid),
            nn.ReLU(inplace=True),
            nn.Conv2d(hid, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(CifarNet):
    """CRD's CIFAR MobileNet-V2 ``mobile_half``: expansion 6, width 0.5, a stride-2 stem, 1280-channel last
    conv, classifier ``Sequential(Linear)``. Its stages end in a linear BN (no activation): RepDistiller's
    forward returns the same f1..f4 with ``preact=True`` (b84f547 mobilenetv2.py:157-158), so a stage's
    pre-activation is the stage's output, read as the input of the module after it."""

    head_name = "classifier"
    feature_stages: ClassVar[dict[str, str]] = {
        "stage0": "conv1",
        "stage1": "blocks.1",
        "stage2": "blocks.2",
        "stage3": "blocks.4",
        "stage4": "blocks.6",
    }  # RepDistiller mobilenetv2.py forward(is_feat=True): f0..f4
    feature_preacts: ClassVar[dict[str, str]] = {
        "stage1": "blocks.2",
        "stage2": "blocks.3",
        "stage3": "blocks.5",
        "stage4": "conv2",
    }

    def __init__(self, num_classes: int = 100, expand: int = 6, width: float = 0.5):
        super().__init__()
        setting = [
            [1, 16, 1, 1],
            [expand, 24, 2, 1],
            [expand, 32, 3, 2],
            [expand, 64, 4, 2],
            [expand, 96, 3, 1],
            [expand, 160, 3, 2],
            [expand, 320, 1, 1],
        ]
        cin = int(32 * width)
        self.conv1 = _conv_bn_relu(3, cin, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in setting:
            cout, layers = int(c * width), []
            for stride in [s] + [1] * (n - 1):
                layers.append(_InvertedResidual(cin, cout, stride, t))
                cin = cout
            self.blocks.append(nn.Sequential(*layers))
        self.last_channel = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = _conv_bn_relu(cin, self.last_channel, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        self.avgpool = nn.AvgPool2d(2, ceil_mode=True)  # input 32 // (32 // 2)
        _init_msra(self, linear_std=0.01)

    def features(self, x):
        x = self.conv1(x)
        for b in self.blocks:
            x = b(x)
        return self.avgpool(self.conv2(x)).flatten(1)


# -------------------------------------------------------------------------------- MobileNet-V1 (ImageNet)
class MobileNetV1(CifarNet):
    """MobileNet-V1 1.0 for 224 x 224 ImageNet as mdistiller's models/imagenet/mobilenetv1.py: ``model`` (a stem
    and 13 depthwise-separable convs, then global average pooling) and ``fc``. Default PyTorch initialisation."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()

        def dw(cin, cout, stride):
            return nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
                nn.BatchNorm2d(cin),
                nn.ReLU(inplace=True),
                nn.Conv2d(cin, cout, 1, 1, 0, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        plan = [
            (32, 64, 1),
            (64, 128, 2),
            (128, 128, 1),
            (128, 256, 2),
            (256, 256, 1),
            (256, 512, 2),
            *[(512, 512, 1)] * 5,
            (512, 1024, 2),
            (1024, 1024, 1),
        ]
        # mdistiller pools with AvgPool2d(7): the same at 224 px; adaptive so that other sizes work too
        self.model = nn.Sequential(_conv_bn_relu(3, 32, 3, 2), *[dw(*p) for p in plan], nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(1024, num_classes)

    def features(self, x):
        return self.model(x).flatten(1)


# ----------------------------------------------------------------------------------------------- names
CIFAR_ARCHS = {
    "resnet8": lambda k: ResNet(8, (16, 16, 32, 64), k),
    "resnet14": lambda k: ResNet(14, (16, 16, 32, 64), k),
    "resnet20": lambda k: ResNet(20, (16, 16, 32, 64), k),
    "resnet32": lambda k: ResNet(32, (16, 16, 32, 64), k),
    "resnet44": lambda k: ResNet(44, (16, 16, 32, 64), k),
    "resnet56": lambda k: ResNet(56, (16, 16, 32, 64), k),
    "resnet110": lambda k: ResNet(110, (16, 16, 32, 64), k),
    "resnet8x4": lambda k: ResNet(8, (32, 64, 128, 256), k),
    "resnet32x4": lambda k: ResNet(32, (32, 64, 128, 256), k),
    "ResNet50": lambda k: ResNet50(k),
    "wrn_16_1": lambda k: WideResNet(16, 1, k),
    "wrn_16_2": lambda k: WideResNet(16, 2, k),
    "wrn_40_1": lambda k: WideResNet(40, 1, k),
    "wrn_40_2": lambda k: WideResNet(40, 2, k),
    **{name: partial(VGG, cfg) for name, cfg in VGG_CFG.items()},
    "ShuffleV1": lambda k: ShuffleNetV1(k),
    "ShuffleV2": lambda k: ShuffleNetV2(k),
    "MobileNetV2": lambda k: MobileNetV2(k),
}


def build_cifar_model(arch: str, num_classes: int) -> CifarNet:
    return CIFAR_ARCHS[arch](num_classes)
