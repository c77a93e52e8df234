"""zss/utils/bank.py: the one FIFO bank behind the CLS bank (GLM / SGD negatives) and the pseudo-weight bank
(CLIP-ZSS cross-image negatives), and the training-state layouts older checkpoints carry."""

from __future__ import annotations

import pytest
import torch

from zss.methods.clip_zss import PseudoBank
from zss.methods.losses import CLSBank
from zss.utils.bank import FifoBank


def _rows(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)[:, None].expand(-1, 2).clone()  # row i = (v_i, v_i)


def test_unmasked_and_masked_pushes_share_one_ring():
    bank = FifoBank(4, 2)
    bank.push(_rows([1, 2, 3]))
    assert len(bank) == 3 and bank.stored()[:, 0].tolist() == [1, 2, 3]
    present = torch.tensor([[True, False], [False, True]])
    bank.push(_rows([10, 11, 12, 13]).view(2, 2, 2), present)  # 10 and 13 present: slots 3, 0
    rows, valid = bank.slots()
    assert rows[:, 0].tolist() == [13, 2, 3, 10] and valid.all() and int(bank.ptr) == 1
    assert len(bank) == 4 and bank.stored()[:, 0].tolist() == [2, 3, 10, 13]  # oldest first, read back once
    bank.push(_rows(range(20, 30)))  # more than N rows without a mask: the last N stay
    assert bank.stored()[:, 0].tolist() == [26, 27, 28, 29]
    many = torch.ones(6, dtype=torch.bool)
    bank.push(_rows(range(40, 46)), many)  # more than N present rows: the first N stay
    assert sorted(bank.slots()[0][:, 0].tolist()) == [40, 41, 42, 43]
    bank.reset()
    assert len(bank) == 0 and not bank.slots()[1].any() and bank.stored().shape == (0, 2)
    with pytest.raises(ValueError, match=r"FifoBank.push: present \(3,\) does not match"):
        bank.push(_rows([1, 2]), torch.ones(3, dtype=torch.bool))
    assert bank.state_dict() == {}  # never part of a model's weights


def test_train_state_round_trip_and_size_mismatch_names_the_setting():
    bank = CLSBank(4, 2)
    bank.push(_rows([1, 2, 3, 4, 5]))
    other = CLSBank(4, 2)
    other.load_train_state(bank.train_state())
    assert torch.equal(other.get(), bank.get()) and len(other) == 4
    with pytest.raises(ValueError, match=r"CLSBank: the checkpoint's bank is \(4, 2\), this one \(3, 2\).*bank_size"):
        CLSBank(3, 2).load_train_state(bank.train_state())
    with pytest.raises(ValueError, match="pseudo_bank_size"):
        PseudoBank(5, 2).load_train_state(PseudoBank(4, 2).train_state())


def test_older_checkpoint_layouts_still_resume():
    """Training states written before the banks were one class: the CLS bank's (``tokens`` [N, D], ``ptr``,
    ``count``) and the pseudo bank's (``weights`` and ``valid`` with the sink slot, ``ptr``)."""
    cls_state = {"tokens": _rows([5, 6, 3, 4]), "ptr": torch.tensor(2), "count": torch.tensor(4)}
    bank = CLSBank(4, 2)
    bank.load_train_state(cls_state)
    assert bank.get()[:, 0].tolist() == [3, 4, 5, 6] and bank.slots()[1].all()
    partial = CLSBank(4, 2)
    partial.load_train_state({"tokens": _rows([7, 8, 0, 0]), "ptr": torch.tensor(2), "count": torch.tensor(2)})
    assert partial.get()[:, 0].tolist() == [7, 8] and partial.slots()[1].tolist() == [True, True, False, False]
    pseudo_state = {
        "weights": _rows([12, 2, 0, 11, 99]),
        "valid": torch.tensor([True, True, False, True, False]),
        "ptr": torch.tensor(1),
    }
    pb = PseudoBank(4, 2)
    pb.load_train_state(pseudo_state)
    weights, valid = pb.get()
    assert weights[:, 0].tolist() == [12, 2, 0, 11] and valid.tolist() == [True, True, False, True]
    assert int(pb.count) == 3 and int(pb.ptr) == 1
    with pytest.raises(ValueError, match=r"bank is \(5, 2\), this one \(4, 2\).*pseudo_bank_size"):
        pb.load_train_state({**pseudo_state, "weights": _rows(range(6)), "valid": torch.ones(6, dtype=torch.bool)})
