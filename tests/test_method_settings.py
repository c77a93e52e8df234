"""Grouped method settings (zss/methods/settings.py, ``Method.from_flat``): the Python form with dataclasses and the
flat config form build the same method, and a wrong key is named."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import zss
from zss import registry
from zss.methods import (
    ChimeraSeg,
    ClipRC,
    ClipZSS,
    ClipZSSLossSettings,
    GLMSettings,
    PseudoLabelSettings,
    SeenOnlyBaseline,
    SGDSettings,
)
from zss.models.student import Student
from zss.teachers.clip import build_tiny_clip
from zss.teachers.oracle import OracleTeacher

NAMES = ["aeroplane", "bicycle", "bird", "boat", "sheep", "sofa"]
UNSEEN = [4, 5]
D = 16


def _student() -> Student:
    torch.manual_seed(0)
    return Student("test_resnet", embed_dim=D, decoder="mlp", decoder_channels=8)


def _oracle() -> OracleTeacher:
    return OracleTeacher(NAMES, embed_dim=D, patch_size=8, seed=0)


def _batch() -> dict:
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 4, (2, 32, 32), generator=g)
    label[:, :8] = 255
    return dict(image=torch.randn(2, 3, 32, 32, generator=g), label=label, full_label=label.clone())


def test_grouped_and_flat_forms_build_the_same_method():
    grouped = ClipZSS(
        _student(),
        _oracle(),
        NAMES,
        UNSEEN,
        glm=GLMSettings(tau=0.1, bank_size=8),
        pl=PseudoLabelSettings(scales=(2, 4), min_area=1),
        loss=ClipZSSLossSettings(nel_weight=1.0),
    )
    flat = ClipZSS.from_flat(
        _student(), _oracle(), NAMES, UNSEEN, glm_tau=0.1, bank_size=8, pl_scales=(2, 4), pl_min_area=1, nel_weight=1.0
    )
    flat.load_state_dict(grouped.state_dict())  # the same weights (construction draws them after the student's)
    # (each its own oracle teacher: its noise stream advances with every call)
    for m in (grouped, flat):
        assert m.glm.tau == 0.1 and m.glm.bank.size == 8 and m.nel_weight == 1.0
        assert m.pl_kwargs == {"scales": (2, 4), "min_area": 1, "max_regions": 32, "mode": "components"}
    torch.manual_seed(1)
    a = grouped.training_step(_batch())
    torch.manual_seed(1)
    b = flat.training_step(_batch())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["loss_nel"] > 0  # the group's field reached the loss


def test_a_group_as_a_mapping_of_its_fields_and_the_flat_round_trip():
    m = ChimeraSeg(_student(), build_tiny_clip(embed_dim=D), NAMES, UNSEEN, sgd={"bank_size": 4, "tau": 0.2})
    assert m.sgd.bank.size == 4 and m.sgd.tau == 0.2
    s = SGDSettings(bank_size=4, weight=0.5)
    assert s.to_flat()["bank_size"] == 4 and s.to_flat()["sgd_weight"] == 0.5 and "weight" not in s.to_flat()
    assert SGDSettings(**{f: s.to_flat()[k] for f, k in SGDSettings.flat_keys().items()}) == s
    assert s.replace(tau=0.3).tau == 0.3 and s.tau == 0.07
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.tau = 0.3  # frozen: a default instance is never changed by a user


def test_pl_fusion_reaches_the_pseudo_labels_and_a_bad_one_is_named():
    assert ClipZSS.from_flat(_student(), _oracle(), NAMES, UNSEEN, pl_fusion="merge").pl_kwargs["mode"] == "merge"
    with pytest.raises(
        ValueError, match=r"pl_fusion must be one of \('merge', 'components', 'matching'\), got 'merged'"
    ):
        ClipZSS.from_flat(_student(), _oracle(), NAMES, UNSEEN, pl_fusion="merged")


def test_from_flat_names_an_unknown_key_and_the_method():
    with pytest.raises(TypeError, match=r"ClipZSS\.from_flat.*'glm_tua'.*glm_tau"):
        ClipZSS.from_flat(_student(), _oracle(), NAMES, UNSEEN, glm_tua=0.1)
    with pytest.raises(TypeError, match=r"SeenOnlyBaseline\.from_flat.*'nel_weight'"):
        SeenOnlyBaseline.from_flat(_student(), _oracle(), NAMES, UNSEEN, nel_weight=1.0)
    with pytest.raises(TypeError, match=r"glm= is given whole and as flat keys \['glm_tau'\]"):
        ClipZSS.from_flat(_student(), _oracle(), NAMES, UNSEEN, glm=GLMSettings(), glm_tau=0.1)
    with pytest.raises(TypeError, match=r"ClipZSS\(glm=\.\.\.\): GLMSettings has no field \['glm_tau'\]"):
        ClipZSS(_student(), _oracle(), NAMES, UNSEEN, glm={"glm_tau": 0.1})  # fields, not flat keys
    with pytest.raises(TypeError, match="expected a ClipRCEncoderSettings"):
        ClipRC(None, build_tiny_clip(embed_dim=D), NAMES, UNSEEN, encoder=GLMSettings())
    assert ClipZSS.flat_keys()["pl_lambda"] == ("pl", "lam")
    assert ClipZSS.flat_keys()["pseudo_negatives"] == ("pseudo", "mode")


def test_create_method_takes_a_whole_group_as_override():
    m = zss.create_method(
        "clip_zss",
        student=_student(),
        teacher=_oracle(),
        glm=GLMSettings(tau=0.1),
        pseudo_negatives="bank",
        pseudo_bank_size=16,
    )
    assert m.glm.tau == 0.1 and m.pseudo_bank.size == 16
    # the group replaces every field of the config's group: here the config's bank_size 1024 = the class default
    assert m.glm.bank.size == GLMSettings().bank_size


def test_registry_builds_a_method_node_through_from_flat():
    node = {"_target_": "zss.methods.clip_zss.ClipZSS", "glm_tau": 0.1, "bank_size": 8, "name": "clip_zss"}
    m = registry.build(
        node, "method", "test", drop=("name",), student=_student(), teacher=_oracle(), classnames=NAMES, unseen=UNSEEN
    )
    assert isinstance(m, ClipZSS) and m.glm.tau == 0.1 and m.glm.bank.size == 8
    with pytest.raises(TypeError, match=r"ClipZSS\.from_flat.*'glm_tua'"):
        registry.build(
            {**node, "glm_tua": 1.0},
            "method",
            "test",
            drop=("name",),
            student=_student(),
            teacher=_oracle(),
            classnames=NAMES,
            unseen=UNSEEN,
        )
