"""Tests for zss/methods/losses.py: InfoNCE, CLS bank, CLS attention pooling, ZegCLIP NEL."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from zss.methods.losses import (
    CLSBank,
    GlobalDistillLoss,
    cls_attention_pool,
    dice_loss,
    info_nce,
    nel_loss,
    sigmoid_focal_loss,
)


# ------------------------------------------------------------------------------------- InfoNCE
def test_info_nce_matches_hand_computed_value():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    n = torch.tensor([[0.0, -1.0]])
    tau = 0.5
    # anchor 0: dots with (p0, p1, n0) = (0.6, 1.0, 0.0), positive p0
    # anchor 1: dots with (p0, p1, n0) = (0.8, 0.0, -1.0), positive p1
    l0 = -math.log(math.exp(0.6 / tau) / (math.exp(0.6 / tau) + math.exp(1.0 / tau) + math.exp(0.0)))
    l1 = -math.log(math.exp(0.0) / (math.exp(0.8 / tau) + math.exp(0.0) + math.exp(-1.0 / tau)))
    assert info_nce(a, p, n, tau=tau).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    # without bank negatives: only in-batch
    m0 = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(2.0)))
    m1 = -math.log(1.0 / (math.exp(1.6) + 1.0))
    assert info_nce(a, p, None, tau=tau).item() == pytest.approx((m0 + m1) / 2, rel=1e-6)


def test_info_nce_three_by_three_and_validation():
    a = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    p = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])
    tau = 1.0
    # anchor 0 matches p0 (dots 1,0,0); anchors 1, 2 point at the wrong positive (dots 0,0,1 / 0,1,0)
    good = -math.log(math.e / (math.e + 2))
    bad = -math.log(1 / (math.e + 2))
    assert info_nce(a, p, tau=tau).item() == pytest.approx((good + 2 * bad) / 3, rel=1e-6)
    with pytest.raises(ValueError, match="tau"):
        info_nce(a, p, tau=0.0)
    with pytest.raises(ValueError, match="anchor and positive"):
        info_nce(a, p[:2])


def test_glm_loss_decreases_as_prediction_moves_to_its_cls():
    torch.manual_seed(0)
    cls = F.normalize(torch.randn(4, 8), dim=-1)
    noise = F.normalize(torch.randn(4, 8), dim=-1)
    losses = [
        info_nce(F.normalize((1 - t) * noise + t * cls, dim=-1), cls, tau=0.07).item() for t in (0.0, 0.3, 0.6, 1.0)
    ]
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0]

    # and gradient descent on student embeds lowers the GlobalDistillLoss
    glm = GlobalDistillLoss(dim=8, tau=0.1, bank_size=0)
    emb = torch.randn(4, 8, 3, 3, requires_grad=True)
    opt = torch.optim.SGD([emb], lr=1.0)
    first = None
    for _ in range(20):
        loss = glm(F.normalize(emb, dim=1), cls)["loss_glm"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_global_distill_loss_pushes_after_computing_the_loss():
    torch.manual_seed(0)
    cls = F.normalize(torch.randn(3, 8), dim=-1)
    emb = F.normalize(torch.randn(3, 8, 2, 2), dim=1)
    glm = GlobalDistillLoss(dim=8, tau=0.07, bank_size=16)
    out1 = glm(emb, cls)
    # first call: bank was empty, so the loss equals in-batch InfoNCE only
    pred = F.normalize(cls_attention_pool(emb, cls), dim=-1)
    assert out1["loss_glm"].item() == pytest.approx(info_nce(pred, cls, None, 0.07).item(), rel=1e-6)
    assert len(glm.bank) == 3 and torch.allclose(glm.bank.get(), cls)
    out2 = glm(emb, cls)  # now the bank (holding these CLS tokens) adds negatives
    assert out2["loss_glm"].item() == pytest.approx(info_nce(pred, cls, cls, 0.07).item(), rel=1e-6)
    glm.eval()
    glm(emb, cls)
    assert len(glm.bank) == 6  # eval mode does not push
    assert "bank" not in "".join(glm.state_dict().keys())  # not checkpointed


# ------------------------------------------------------------------------------------- bank
def test_cls_bank_fifo_order_and_wraparound():
    bank = CLSBank(size=4, dim=2)
    assert len(bank) == 0 and bank.get().shape == (0, 2)
    rows = torch.arange(12, dtype=torch.float32).view(6, 2)  # rows r_i = [2i, 2i+1]
    bank.push(rows[:3])
    assert torch.equal(bank.get(), rows[:3])
    bank.push(rows[3:5])  # wraps: r0 dropped
    assert len(bank) == 4
    assert torch.equal(bank.get(), rows[1:5])  # oldest first
    bank.push(rows[5:6])
    assert torch.equal(bank.get(), rows[2:6])
    bank.push(torch.arange(20, dtype=torch.float32).view(10, 2))  # more than capacity: last 4 kept
    assert torch.equal(bank.get(), torch.arange(20, dtype=torch.float32).view(10, 2)[-4:])
    with pytest.raises(ValueError, match="CLSBank.push"):
        bank.push(torch.zeros(2, 3))
    assert bank.state_dict() == {}  # persistent=False


# ------------------------------------------------------------------------------------- pooling
def test_cls_attention_pool_peaked_attention_returns_that_token():
    d = 4
    tokens = torch.eye(d)[[0, 1, 2, 3, 1]].t()[None]  # [1, D, L=5]
    cls = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    out = cls_attention_pool(tokens, cls, scale=100.0)  # softmax is one-hot on token 2
    assert torch.allclose(out, tokens[:, :, 2], atol=1e-6)
    # default scale 1/sqrt(D): explicit formula
    logits = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0]) / 2.0
    w = logits.exp() / logits.exp().sum()
    assert torch.allclose(cls_attention_pool(tokens, cls), (tokens[0] * w).sum(1)[None], atol=1e-6)
    # [B, D, h, w] input and a mask that removes the peak token
    grid = tokens[:, :, :4].reshape(1, d, 2, 2)
    mask = torch.tensor([[[True, True], [False, True]]])
    out = cls_attention_pool(grid, cls, scale=100.0, mask=mask)
    assert torch.allclose(out, tokens[:, :, [0, 1, 3]].mean(-1), atol=1e-5)
    with pytest.raises(ValueError):
        cls_attention_pool(tokens, cls[:, :3])


# ------------------------------------------------------------------------------------- NEL
def _focal_elem(x: float, t: float, alpha=0.25, gamma=2.0) -> float:
    p = 1 / (1 + math.exp(-x))
    ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    pt = p * t + (1 - p) * (1 - t)
    at = alpha * t + (1 - alpha) * (1 - t)
    return at * (1 - pt) ** gamma * ce


def test_focal_and_dice_hand_computed_and_ignore():
    # 1 image, 2 classes, 1x3 pixels; pixel 2 is ignored
    logits = torch.tensor([[[[2.0, -1.0, 5.0]], [[0.5, 1.5, -5.0]]]])
    target = torch.tensor([[[0, 1, 255]]])
    elems = [[_focal_elem(2.0, 1), _focal_elem(-1.0, 0)], [_focal_elem(0.5, 0), _focal_elem(1.5, 1)]]
    mean_ref = sum(map(sum, elems)) / 4
    assert sigmoid_focal_loss(logits, target, reduction="mean").item() == pytest.approx(mean_ref, rel=1e-5)
    # zegclip: per-(image,class) mean over 2 valid pixels, summed, / 2 present pairs
    zeg_ref = (sum(elems[0]) / 2 + sum(elems[1]) / 2) / 2
    assert sigmoid_focal_loss(logits, target).item() == pytest.approx(zeg_ref, rel=1e-5)

    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    d0 = 1 - (2 * s(2.0) + 1) / (s(2.0) + s(-1.0) + 1 + 1)
    d1 = 1 - (2 * s(1.5) + 1) / (s(0.5) + s(1.5) + 1 + 1)
    assert dice_loss(logits, target).item() == pytest.approx((d0 + d1) / 2, rel=1e-5)

    # ignored pixels do not contribute: changing their logits changes nothing
    other = logits.clone()
    other[..., 2] = torch.tensor([-7.0, 9.0])[None, :, None]
    for fn in (sigmoid_focal_loss, dice_loss):
        assert fn(other, target).item() == pytest.approx(fn(logits, target).item(), rel=1e-6)
    out = nel_loss(logits, target)
    assert out["loss_nel"].item() == pytest.approx(100 * zeg_ref + (d0 + d1) / 2, rel=1e-5)
    # gradients of ignored pixels are exactly zero
    x = logits.clone().requires_grad_(True)
    nel_loss(x, target)["loss_nel"].backward()
    assert torch.all(x.grad[..., 2] == 0) and torch.all(x.grad[..., :2] != 0)


def test_nel_class_mask_all_ignored_and_errors():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.randint(0, 2, (2, 4, 4))
    cmask = torch.tensor([[True, True, False], [True, True, False]])
    base = nel_loss(logits, target, class_mask=cmask)["loss_nel"]
    moved = logits.detach().clone()
    moved[:, 2] += 10  # a masked channel: no effect
    assert nel_loss(moved, target, class_mask=cmask)["loss_nel"].item() == pytest.approx(base.item(), rel=1e-6)
    empty = nel_loss(logits, torch.full((2, 4, 4), 255))["loss_nel"]
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="outside"):
        sigmoid_focal_loss(logits, torch.full((2, 4, 4), 3))
    with pytest.raises(ValueError, match="upsample"):
        dice_loss(logits, target[:, :2])
    # dice over all classes (absent ones pushed to 0) is larger than present-only for a random init
    assert dice_loss(logits, target, present_only=False).item() != dice_loss(logits, target).item()


def test_info_nce_ddp_gathers_other_ranks_positives(monkeypatch):
    """Simulated world of 2 (this process is rank 1): in-batch negatives include rank 0's CLS tokens,
    the target index is offset by rank * B, and gradients still reach the local rows."""
    import torch.distributed as tdist

    import zss.utils.dist as zdist

    other = torch.tensor([[0.0, 1.0], [0.6, 0.8]])  # rank 0's positives

    def fake_all_gather(parts, x):
        parts[0].copy_(other)
        parts[1].copy_(x)

    monkeypatch.setattr(zdist, "is_dist", lambda: True)  # the one all-gather helper (zdist.all_gather_cat)
    monkeypatch.setattr(tdist, "get_world_size", lambda: 2)
    monkeypatch.setattr(tdist, "get_rank", lambda: 1)
    monkeypatch.setattr(tdist, "all_gather", fake_all_gather)
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    p = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    loss = info_nce(a, p, None, tau=1.0)
    # anchor 0: keys (o0, o1, p0, p1) dots = (0, 0.6, 1, -1), target p0; anchor 1: (1, 0.8, 0, 0), target p1
    l0 = -math.log(math.e / (1 + math.exp(0.6) + math.e + math.exp(-1)))
    l1 = -math.log(1 / (math.e + math.exp(0.8) + 1 + 1))
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    loss.backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    # GlobalDistillLoss pushes the gathered CLS of both ranks (banks stay identical across ranks)
    glm = GlobalDistillLoss(dim=2, bank_size=8)
    glm(torch.randn(2, 2, 2, 2), p.detach())
    assert torch.allclose(glm.bank.get(), torch.cat([other, p.detach()]))
