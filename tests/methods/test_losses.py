import math

import numpy as np
import pytest
import torch

from lskd_bench.methods import LossContext, build_method, kd_loss, ls_cross_entropy, smoothed_targets, total_loss


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


LOGITS = np.array([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 3.0, -2.0]])
TEACHER = np.array([[3.0, 1.0, -0.5, 0.2], [-1.0, 0.0, 2.5, 0.5]])
TARGETS = np.array([0, 2])


def test_smoothed_targets_formula():
    q = smoothed_targets(torch.tensor([1]), 4, 0.1)
    assert torch.allclose(q, torch.tensor([[0.025, 0.925, 0.025, 0.025]]))


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5])
def test_ls_cross_entropy_matches_hand_formula(alpha):
    K = LOGITS.shape[1]
    logp = np.log(softmax(LOGITS))
    expected = 0.0
    for i, y in enumerate(TARGETS):
        q = np.full(K, alpha / K)
        q[y] += 1 - alpha
        expected += -(q * logp[i]).sum()
    expected /= len(TARGETS)
    got = ls_cross_entropy(torch.tensor(LOGITS), torch.tensor(TARGETS), alpha)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_ls_alpha_zero_is_plain_cross_entropy():
    s, y = torch.tensor(LOGITS), torch.tensor(TARGETS)
    assert ls_cross_entropy(s, y, 0.0).item() == pytest.approx(torch.nn.functional.cross_entropy(s, y).item())


@pytest.mark.parametrize("T", [1.0, 2.0, 3.0, 64.0])
@pytest.mark.parametrize("lam,t_squared", [(0.5, True), (0.9, True), (1.0, False)])
def test_kd_loss_matches_hand_computation(T, lam, t_squared):
    ps, pt = softmax(LOGITS / T), softmax(TEACHER / T)
    kl = (pt * (np.log(pt) - np.log(ps))).sum(axis=1).mean()
    ce = -np.log(softmax(LOGITS)[np.arange(2), TARGETS]).mean()
    expected = (1 - lam) * ce + lam * (T * T if t_squared else 1.0) * kl
    got = kd_loss(torch.tensor(LOGITS), torch.tensor(TEACHER), torch.tensor(TARGETS), T, lam, t_squared)
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 64.0])
def test_kd_gradient_scaling(T):
    # d/ds [T^2 KL(pt_T || ps_T)] = T * (ps_T - pt_T) / N ; without T^2 it is (ps_T - pt_T) / (T N)
    s = torch.tensor(LOGITS, requires_grad=True)
    t, y = torch.tensor(TEACHER), torch.tensor(TARGETS)
    diff = softmax(LOGITS / T) - softmax(TEACHER / T)
    kd_loss(s, t, y, T, lam=1.0, t_squared=True).backward()
    np.testing.assert_allclose(s.grad.numpy(), T * diff / 2, rtol=1e-5, atol=1e-12)
    s.grad = None
    kd_loss(s, t, y, T, lam=1.0, t_squared=False).backward()
    np.testing.assert_allclose(s.grad.numpy(), diff / (T * 2), rtol=1e-5, atol=1e-12)


def test_kd_equal_logits_leaves_only_ce():
    s, y = torch.tensor(LOGITS), torch.tensor(TARGETS)
    ce = torch.nn.functional.cross_entropy(s, y).item()
    assert kd_loss(s, s.clone(), y, 3.0, lam=0.5).item() == pytest.approx(0.5 * ce, rel=1e-6)


def test_registered_methods_use_context():
    s, t, y = torch.tensor(LOGITS), torch.tensor(TEACHER), torch.tensor(TARGETS)
    kd = build_method("kd", {"kd": {"lambda": 0.3, "t_squared": True}})
    assert kd.needs_teacher
    terms = kd.loss(s, y, t, LossContext(T=2.0))
    got = total_loss(terms)
    assert got.item() == pytest.approx(kd_loss(s, t, y, 2.0, 0.3, True).item())
    ce = torch.nn.functional.cross_entropy(s, y).item()
    assert terms["ce"].item() == pytest.approx(0.7 * ce) and terms["kd"].item() == pytest.approx(got.item() - 0.7 * ce)
    ls = build_method("ls", {})
    assert not ls.needs_teacher
    assert ls.loss(s, y, None, LossContext(alpha=0.1)).item() == pytest.approx(ls_cross_entropy(s, y, 0.1).item())
    assert math.isfinite(got.item())
