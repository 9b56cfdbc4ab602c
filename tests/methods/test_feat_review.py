"""ReviewKD and OFD (lskd_bench/methods/feat_review.py) against independent NumPy computations on small cases,
their default weights against the authors' cited values, and the BN that OFD's margins come from."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lskd_bench.cifar_models import build_cifar_model
from lskd_bench.errors import UsageError
from lskd_bench.methods import METHODS, LossContext, Probe, build_method
from lskd_bench.methods.feat_common import aligned_last, bn_before_preact
from lskd_bench.methods.feat_review import bn_margin
from lskd_bench.outputs import Outputs, Tap, describe
from lskd_bench.tasks.digits import ARCHS, cnn


# ------------------------------------------------------------------------------------------ NumPy pieces
def np_bn_train(x, bn):
    """BatchNorm2d in training mode: batch statistics (biased variance)."""
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    w = bn.weight.detach().double().numpy().reshape(1, -1, 1, 1)
    b = bn.bias.detach().double().numpy().reshape(1, -1, 1, 1)
    return (x - mean) / np.sqrt(var + bn.eps) * w + b


def np_conv(x, conv):
    """Conv2d, stride 1, 'same' padding (1x1 or 3x3), by shifted sums."""
    w = conv.weight.detach().double().numpy()
    k = w.shape[2]
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    h, wd = x.shape[2], x.shape[3]
    out = np.zeros((x.shape[0], w.shape[0], h, wd))
    for i in range(k):
        for j in range(k):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i : i + h, j : j + wd], w[:, :, i, j])
    if conv.bias is not None:
        out += conv.bias.detach().double().numpy().reshape(1, -1, 1, 1)
    return out


def np_nearest(x, size):
    """Nearest resize by an integer factor (up) or to 1x1 from 1x1."""
    f = size // x.shape[2]
    return x.repeat(f, axis=2).repeat(f, axis=3)


def np_pool(x, size):
    n, c, h, w = x.shape
    return x.reshape(n, c, size, h // size, size, w // size).mean(axis=(3, 5))


def np_hcl(fs_list, ft_list):
    total = 0.0
    for fs, ft in zip(fs_list, ft_list):
        h = fs.shape[2]
        terms = [(1.0, ((fs - ft) ** 2).mean())]
        w = 1.0
        for size in (4, 2, 1):
            if size < h:
                w /= 2
                terms.append((w, ((np_pool(fs, size) - np_pool(ft, size)) ** 2).mean()))
        total += sum(a * b for a, b in terms) / sum(a for a, _ in terms)
    return total


def _np(t):
    return t.detach().double().numpy()


# --------------------------------------------------------------------------------------------- ReviewKD
def _reviewkd_case(epoch, **params):
    torch.manual_seed(0)
    B = 3
    s = Outputs(
        {
            "stage1": torch.randn(B, 2, 4, 4),
            "stage2": torch.randn(B, 3, 2, 2),
            "embedding": torch.randn(B, 4),
            "logits": torch.randn(B, 5),
        }
    )
    # the teacher has one more stage: the two deepest pair with the student's (aligned_last)
    t = Outputs(
        {
            "preact_stage1": torch.randn(B, 7, 8, 8),
            "preact_stage2": torch.randn(B, 3, 4, 4),
            "preact_stage3": torch.randn(B, 2, 2, 2),
            "embedding": torch.randn(B, 5),
        }
    )
    m = build_method("reviewkd", {"reviewkd": params})
    m.setup(Probe(None, None, s, t, None, None, 10, 5))
    m.train()
    y = torch.tensor([0, 3, 4])
    out = m.compute(s, y, t, LossContext(epoch=epoch, epochs=240))
    return m, s, t, y, out


def np_reviewkd(m, s, t):
    feats = [_np(s["stage1"]), _np(s["stage2"]), _np(s["embedding"])[:, :, None, None]]
    targets = [_np(t["preact_stage2"]), _np(t["preact_stage3"]), _np(t["embedding"])[:, :, None, None]]
    results = [None] * 3
    res = None
    for i in (2, 1, 0):  # deepest first
        abf = m.abfs[i]
        x = np_bn_train(np_conv(feats[i], abf.conv1[0]), abf.conv1[1])
        if i < 2:
            y = np_nearest(res, x.shape[2])
            z = 1 / (1 + np.exp(-np_conv(np.concatenate([x, y], axis=1), abf.att_conv[0])))
            x = x * z[:, 0:1] + y * z[:, 1:2]
        x = np_nearest(x, targets[i].shape[2]) if x.shape[2] < targets[i].shape[2] else x
        res = x
        results[i] = np_bn_train(np_conv(x, abf.conv2[0]), abf.conv2[1])
    return np_hcl(results, targets)


def test_reviewkd_loss_equals_a_numpy_review_chain_and_hcl():
    m, s, t, y, out = _reviewkd_case(epoch=30)
    assert [a.conv1[0].out_channels for a in m.abfs] == [4, 4, 4]  # min(512, student embedding width 4)
    assert [a.conv2[0].out_channels for a in m.abfs] == [3, 2, 5]  # the paired teacher stages, embedding
    assert [a.att_conv is None for a in m.abfs] == [False, False, True]  # no fusion at the deepest level
    expected = 5.0 * np_reviewkd(m, s, t)  # epoch 30 >= warm-up 20: full weight
    assert out["feat"].item() == pytest.approx(expected, rel=1e-5)
    ce = torch.nn.functional.cross_entropy(s["logits"], y).item()
    assert out["ce"].item() == pytest.approx(ce, rel=1e-6)


def test_reviewkd_feature_weight_ramps_up_over_the_warmup_epochs():
    full = _reviewkd_case(epoch=20)[-1]["feat"].item()
    assert _reviewkd_case(epoch=0)[-1]["feat"].item() == 0.0  # train.py:225 min(1, epoch / kd_warm_up), 0-based
    assert _reviewkd_case(epoch=5)[-1]["feat"].item() == pytest.approx(full / 4, rel=1e-6)
    assert _reviewkd_case(epoch=100)[-1]["feat"].item() == pytest.approx(full, rel=1e-6)
    assert _reviewkd_case(epoch=0, warmup_epochs=0)[-1]["feat"].item() == pytest.approx(full, rel=1e-6)


def test_reviewkd_teacher_stage_outputs_when_asked():
    m = build_method("reviewkd", {"reviewkd": {"teacher_preact": False}})
    assert m.needs.teacher == ("stages", "embedding")
    assert build_method("reviewkd", {"reviewkd": {}}).needs.teacher == ("preact_stages", "embedding")


# -------------------------------------------------------------------------------------------------- OFD
def test_margin_is_the_mean_of_the_negative_part_of_the_bn_gaussian():
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5, 1.0]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, -0.3, 5.0]))
    got = bn_margin(bn).flatten().tolist()
    assert got[0] == pytest.approx(-2 / math.sqrt(2 * math.pi), rel=1e-6)  # N(0, 1): E[x | x < 0] = -sqrt(2/pi)
    for c, (g, b) in enumerate([(2.0, 1.0), (0.5, -0.3)]):  # |gamma|, beta: b - g * phi(b/g) / Phi(-b/g)
        phi = math.exp(-((b / g) ** 2) / 2) / math.sqrt(2 * math.pi)
        Phi = 0.5 * (1 + math.erf(-b / g / math.sqrt(2)))
        assert got[c + 1] == pytest.approx(b - g * phi / Phi, rel=1e-6)
    assert got[3] == pytest.approx(-3.0)  # Phi(-5) < 0.001: -3 |gamma| (distiller.py:39)


def np_partial_l2(src, tgt, margin):
    tgt = np.maximum(tgt, margin)
    keep = (src > tgt) | (tgt > 0)
    return (((src - tgt) ** 2) * keep).sum()


def _digits_probe(method):
    torch.manual_seed(0)
    teacher, student = cnn(ARCHS["cnn_wide"], 10), cnn(ARCHS["cnn_tiny"], 10)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():  # BN affine values that give distinct margins per channel
        for mod in teacher.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.copy_(torch.randn_like(mod.weight))
                mod.bias.copy_(torch.randn_like(mod.bias))
    teacher.eval()
    t_lay, s_lay = describe(teacher, x), describe(student, x)
    m = build_method(method, {method: {}})

    def outs(model, lay, names, grad):
        with torch.set_grad_enabled(grad), Tap(model, lay, names) as tap:
            logits = model(x)
        return Outputs({**tap.out, "logits": logits})

    t = outs(teacher, t_lay, m.needs.teacher, False)
    m.setup(Probe(student, teacher, outs(student, s_lay, m.needs.student, False), t, s_lay, t_lay, 50, 10))
    student.train()
    return m, teacher, outs(student, s_lay, m.needs.student, True), t


def test_ofd_loss_equals_a_numpy_partial_l2_over_the_deepest_paired_stages():
    m, teacher, s, t = _digits_probe("ofd")
    y = torch.tensor([1, 2, 3, 4])
    out = m.compute(s, y, t, LossContext(epoch=0, epochs=2))
    # student 2 stages (8x8, 4x4), teacher 3 (8x8, 4x4, 2x2): the student's pair with the teacher's last two,
    # each teacher map pooled to the student's size (here upsampled: adaptive pooling to a larger size repeats)
    bns = [teacher.backbone[5], teacher.backbone[9]]  # the BN before the ReLU of stage 2 and 3
    total = 0.0
    for i, (sk, tk) in enumerate([("preact_stage1", "preact_stage2"), ("preact_stage2", "preact_stage3")]):
        conv, bn = m.connectors[i]
        src = np_bn_train(np_conv(_np(s[sk]), conv), bn)
        tgt = np_nearest(_np(t[tk]), src.shape[2])
        total += np_partial_l2(src, tgt, _np(bn_margin(bns[i]))) / 2 ** (1 - i)
    expected = 1e-3 * total / 4
    assert out["feat"].item() == pytest.approx(expected, rel=1e-5)
    assert m.margin2.flatten().tolist() == pytest.approx(bn_margin(bns[1]).flatten().tolist())


def test_ofd_connector_init_and_state():
    m, *_ = _digits_probe("ofd")
    conv, bn = m.connectors[0]
    assert conv.bias is None and conv.kernel_size == (1, 1) and (conv.in_channels, conv.out_channels) == (8, 64)
    assert bn.weight.detach().eq(1).all() and bn.bias.detach().eq(0).all()
    assert {"margin1", "margin2"} <= set(m.state_dict())  # the margins travel with checkpoints


@pytest.mark.parametrize(
    "arch, expected",
    [
        ("resnet8x4", ["layer1.0.bn2", "layer2.0.bn2", "layer3.0.bn2"]),  # not the downsample BN run after bn2
        ("resnet32x4", ["layer1.4.bn2", "layer2.4.bn2", "layer3.4.bn2"]),
        pytest.param(
            "ResNet50", ["layer1.2.bn3", "layer2.3.bn3", "layer3.5.bn3", "layer4.2.bn3"], marks=pytest.mark.slow
        ),
        ("vgg8", ["block1.1", "block2.1", "block3.1", "block4.1"]),
        ("wrn_16_2", ["block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"]),  # RepDistiller wrn.py:96-101
        # RepDistiller mobilenetv2.py:119-124 (blocks[i][-1].conv[-1]; not the identity shortcut's BN)
        ("MobileNetV2", ["blocks.1.1.conv.7", "blocks.2.2.conv.7", "blocks.4.2.conv.7", "blocks.6.0.conv.7"]),
        ("ShuffleV1", ["layer1.3.bn3", "layer2.7.bn3", "layer3.3.bn3"]),  # the last unit's main path
    ],
)
def test_bn_before_each_preactivation_is_what_the_authors_list(arch, expected):
    """OFD's get_bn_before_relu (clovaai CIFAR-100/models/ResNet.py; mdistiller models/cifar/*.py): the last BN
    of each stage's main path, found here from the graph, not per architecture."""
    model = build_cifar_model(arch, 10)
    layout = describe(model, torch.randn(2, 3, 32, 32))
    stages = [k for k in layout.preact if k != "stage0"]
    names = {id(mod): n for n, mod in model.named_modules()}
    assert [names[id(bn)] for bn in bn_before_preact(model, layout, stages)] == expected
    assert model.training  # the mode is restored


def test_ofd_needs_preactivations_one_line_error():
    net = build_cifar_model("MobileNetV2", 10)
    net.feature_preacts = {}  # a model without pre-activations
    layout = describe(net, torch.randn(2, 3, 32, 32))
    with pytest.raises(UsageError, match="no output 'preact_stage1'"):
        Tap(net, layout, METHODS.get("ofd").needs.student)
    with pytest.raises(UsageError, match="no pre-activation of stage1"):
        bn_before_preact(net, layout, ["stage1"])
    shuffle = build_cifar_model("ShuffleV2", 10)  # a pre-activation made of two parts: no one BN before it
    layout = describe(shuffle, torch.randn(2, 3, 32, 32))
    with pytest.raises(UsageError, match="pre-activation of stage1 is not the output of a BatchNorm2d"):
        bn_before_preact(shuffle, layout, ["stage1"])


def test_aligned_last_keeps_the_deepest():
    assert aligned_last([1, 2, 3], ["a", "b"]) == [[2, 3], ["a", "b"]]


def test_default_weights_are_the_authors_cifar100_values():
    rk = METHODS.get("reviewkd").params.check({}, "reviewkd")
    assert (rk["beta"], rk["warmup_epochs"], rk["max_mid_channels"], rk["teacher_preact"], rk["ce"]) == (
        5.0,
        20.0,
        512,
        True,
        1.0,
    )  # reviewKD.sh:7, train.py:50, reviewkd.py:69, train.py:222
    ofd = METHODS.get("ofd").params.check({}, "ofd")
    assert (ofd["beta"], ofd["ce"]) == (1e-3, 1.0)  # train_with_distillation.py:91 "/ batch_size / 1000"
    # the teacher's mode: OFD's authors train mode everywhere (CIFAR-100/train_with_distillation.py:75, ImageNet/:167);
    # ReviewKD's eval by default (ImageNet/imagenet_amp.py:358; the cifar100 recipe sets train, CIFAR-100/train.py)
    assert (ofd["teacher_mode"], rk["teacher_mode"]) == ("train", "eval")
    # eval stays out of the cell's hash (every teacher before the option), train is in it
    for cls, p in ((METHODS.get("reviewkd"), rk), (METHODS.get("ofd"), ofd)):
        assert "teacher_mode" not in cls.identity_params({**p, "teacher_mode": "eval"})
        assert cls.identity_params({**p, "teacher_mode": "train"})["teacher_mode"] == "train"
