"""Pre-activations (``preact_stageK``) of the CIFAR models whose stages do not end in an activation module (WRN,
ShuffleNet-V1/V2, MobileNet-V2) are the tensors RepDistiller's ``forward(x, is_feat=True, preact=True)`` returns
(HobbitLong/RepDistiller@b84f547 models/wrn.py:118-121, ShuffleNetv1.py:110-111, ShuffleNetv2.py:156-157,
mobilenetv2.py:157-158): each is checked against an independent forward written here after that code, on the
same weights, in eval and in training mode."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lskd_bench.cifar_models import build_cifar_model
from lskd_bench.outputs import Tap, describe


def _shuffle(x: torch.Tensor, g: int) -> torch.Tensor:
    """RepDistiller's ShuffleBlock: [N,C,H,W] -> [N,g,C/g,H,W] -> [N,C/g,g,H,W] -> [N,C,H,W]."""
    n, c, h, w = x.size()
    return x.view(n, g, c // g, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


# ---------------------------------------------------------------- forwards after RepDistiller's models/*.py
def rd_wrn(m, x):
    """wrn.py BasicBlock / WideResNet.forward(is_feat=True, preact=True): f1..f3 through the next BN."""

    def block(b, x):
        if not b.equal:
            x = F.relu(b.bn1(x))
        else:
            out = F.relu(b.bn1(x))
        out = F.relu(b.bn2(b.conv1(out if b.equal else x)))
        out = b.conv2(out)
        return torch.add(x if b.equal else b.convShortcut(x), out)

    def group(g, x):
        for b in g.layer:
            x = block(b, x)
        return x

    f1 = group(m.block1, m.conv1(x))
    f2 = group(m.block2, f1)
    f3 = group(m.block3, f2)
    logits = m.fc(F.avg_pool2d(F.relu(m.bn1(f3)), 8).flatten(1))
    return [m.block2.layer[0].bn1(f1), m.block3.layer[0].bn1(f2), m.bn1(f3)], logits


def rd_shufflev1(m, x):
    """ShuffleNetv1.py Bottleneck (is_last: ``preact``) / ShuffleNet.forward: f1_pre..f3_pre."""

    def block(b, x):
        out = F.relu(b.bn1(b.conv1(x)))
        out = _shuffle(out, b.g)
        out = F.relu(b.bn2(b.conv2(out)))
        out = b.bn3(b.conv3(out))
        res = F.avg_pool2d(x, 3, stride=2, padding=1) if b.stride == 2 else x
        preact = torch.cat([out, res], 1) if b.stride == 2 else out + res
        return F.relu(preact), preact

    out = F.relu(m.bn1(m.conv1(x)))
    pres = []
    for layer in (m.layer1, m.layer2, m.layer3):
        for b in layer:
            out, pre = block(b, out)
        pres.append(pre)
    return pres, m.linear(F.avg_pool2d(out, 4).flatten(1))


def rd_shufflev2(m, x):
    """ShuffleNetv2.py BasicBlock (is_last: ``preact``, unshuffled) / DownBlock / ShuffleNetV2.forward."""

    def basic(b, x):
        c = int(x.size(1) * 0.5)
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(b.bn1(b.conv1(x2)))
        out = b.bn2(b.conv2(out))
        preact = b.bn3(b.conv3(out))
        out = F.relu(preact)
        return _shuffle(torch.cat([x1, out], 1), 2), torch.cat([x1, preact], 1)

    def down(b, x):
        out1 = F.relu(b.bn2(b.conv2(b.bn1(b.conv1(x)))))
        out2 = b.bn4(b.conv4(F.relu(b.bn3(b.conv3(x)))))
        out2 = F.relu(b.bn5(b.conv5(out2)))
        return _shuffle(torch.cat([out1, out2], 1), 2)

    out = F.relu(m.bn1(m.conv1(x)))
    pres = []
    for layer in (m.layer1, m.layer2, m.layer3):
        out = down(layer[0], out)
        for b in layer[1:]:
            out, pre = basic(b, out)
        pres.append(pre)
    out = F.relu(m.bn2(m.conv2(out)))
    return pres, m.linear(F.avg_pool2d(out, 4).flatten(1))


def rd_mobilenetv2(m, x):
    """mobilenetv2.py MobileNetV2.forward: ``preact`` changes nothing, f1..f4 are the outputs of blocks 1, 2, 4, 6."""

    def inverted(b, x):
        return x + b.conv(x) if b.use_res_connect else b.conv(x)

    out, feats = m.conv1(x), []
    for i, blocks in enumerate(m.blocks):
        for b in blocks:
            out = inverted(b, out)
        if i in (1, 2, 4, 6):
            feats.append(out)
    return feats, m.classifier(m.avgpool(m.conv2(out)).flatten(1))


REFERENCE = {
    "wrn_16_2": rd_wrn,
    "ShuffleV1": rd_shufflev1,
    "ShuffleV2": rd_shufflev2,
    "MobileNetV2": rd_mobilenetv2,
}


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("arch", list(REFERENCE))
def test_preact_stages_are_repdistillers(arch, train):
    torch.manual_seed(0)
    m = build_cifar_model(arch, 100)
    with torch.no_grad():  # BN statistics that are not (1, 0), so that a wrong BN would show
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.2)
    x = torch.randn(2, 3, 32, 32)
    layout = describe(m, x)
    ref_model = copy.deepcopy(m)  # its own BN statistics: the reference's extra BN calls (WRN) update them
    m.train(train)
    ref_model.train(train)
    with torch.no_grad(), Tap(m, layout, ["preact_stages", "stages"]) as tap:
        logits = m(x)
        ref, ref_logits = REFERENCE[arch](ref_model, x)
    out = tap.out
    got = out.stages(pre=True)
    assert len(got) == len(ref) == len(out.stages())
    for k, (a, b) in enumerate(zip(got, ref), 1):
        assert a.shape == b.shape, (arch, k)
        assert torch.equal(a, b), f"{arch} preact_stage{k}: max diff {(a - b).abs().max():.3g}"
    assert torch.equal(logits, ref_logits)
    if arch != "MobileNetV2":  # really before the ReLU (not overwritten by an in-place one), and not the stage
        assert all((p < 0).any() for p in got)
    else:  # its stages end in a linear BN: the pre-activation is the stage
        assert all(torch.equal(p, s) for p, s in zip(got, out.stages()))
    assert set(layout.preact) - {"stage0"} == {f"stage{k}" for k in range(1, len(ref) + 1)}
