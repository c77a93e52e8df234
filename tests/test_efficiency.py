"""zss.engine.efficiency: parameter counts, analytic FLOPs of single layers, report keys and formatting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zss.engine.efficiency import count_parameters, efficiency_report, format_efficiency
from zss.methods.base import Method
from zss.models.student import Student


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return Student("test_resnet", embed_dim=16, decoder="mlp", decoder_channels=16)


def test_param_counts_equal_manual_sums(student):
    total = sum(p.numel() for p in student.parameters())
    backbone = sum(p.numel() for p in student.backbone.parameters())
    assert count_parameters(student) == {"trainable_params": total, "frozen_params": 0, "total_params": total}
    for p in student.backbone.parameters():
        p.requires_grad_(False)
    try:
        c = count_parameters(student)
        assert c["frozen_params"] == backbone and c["trainable_params"] == total - backbone
        assert c["total_params"] == total
    finally:
        for p in student.backbone.parameters():
            p.requires_grad_(True)


def test_shared_parameters_counted_once():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, lin)
    assert count_parameters(model)["total_params"] == 20


def test_conv_gflops_analytic():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    rep = efficiency_report(conv, image_size=(32, 48), measure=False)
    assert rep["gflops"] == pytest.approx(2 * 32 * 48 * 8 * 3 * 3 * 3 / 1e9)  # FLOPs = 2 x MACs
    strided = nn.Conv2d(3, 6, kernel_size=4, stride=4, groups=3)
    rep = efficiency_report(strided, image_size=(32, 32), measure=False)
    assert rep["gflops"] == pytest.approx(2 * 8 * 8 * 6 * (3 // 3) * 4 * 4 / 1e9)


def test_linear_gflops_analytic():
    lin = nn.Linear(40, 10)  # applied on the last dim of [1, 3, H, 40]
    rep = efficiency_report(lin, image_size=(7, 40), measure=False)
    assert rep["gflops"] == pytest.approx(2 * 3 * 7 * 40 * 10 / 1e9)
    assert rep["total_params"] == 40 * 10 + 10


def test_report_keys_and_restored_state(student):
    student.train()
    rep = efficiency_report(student, image_size=(64, 64), warmup=0, iters=1, batch_size=2)
    for k in (
        "trainable_params",
        "total_params",
        "frozen_params",
        "gflops",
        "img_per_s",
        "device",
        "dtype",
        "image_size",
        "gflops_by_module",
        "peak_mem_mib",
        "threads",
    ):
        assert k in rep, k
    assert set(rep["img_per_s"]) == {1, 2} and all(v > 0 for v in rep["img_per_s"].values())
    assert rep["device"] == "cpu" and rep["dtype"] == "float32" and rep["image_size"] == [64, 64]
    assert rep["gflops"] > 0 and rep["gflops_by_module"]["Student"] == pytest.approx(rep["gflops"])
    assert student.training  # flag restored
    text = format_efficiency(rep)
    assert "GFLOPs @ 64x64" in text and "img/s @ batch 2" in text and "2 x MACs" in text
    assert f"{rep['gflops']:.2f}" in text
    bf = efficiency_report(student, image_size=(32, 32), warmup=0, iters=1, batch_size=1, amp_dtype=torch.bfloat16)
    assert bf["dtype"] == "bfloat16" and set(bf["img_per_s"]) == {1}


def test_method_uses_predict_and_excludes_teacher(student):
    text = F.normalize(torch.randn(5, 16), dim=-1)
    method = Method(student, None, [f"c{i}" for i in range(5)], unseen=[3, 4], text_embeds=text)
    rep = efficiency_report(method, image_size=(64, 64), measure=False)
    s = efficiency_report(student, image_size=(64, 64), measure=False)
    assert rep["total_params"] == s["total_params"]  # text_embeds is a buffer, the teacher is unregistered
    # predict adds the logits (D=16 x C=5 per output pixel at stride 4) on top of the student forward
    assert rep["gflops"] == pytest.approx(s["gflops"] + 2 * 16 * 16 * 16 * 5 / 1e9)


def test_bad_arguments():
    with pytest.raises(ValueError, match="image_size"):
        efficiency_report(nn.Conv2d(3, 3, 1), image_size=(0, 4))
    with pytest.raises(ValueError, match="batch_size"):
        efficiency_report(nn.Conv2d(3, 3, 1), batch_size=0)
