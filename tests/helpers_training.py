"""What the trainer tests of every method share: a run to the end, an interrupted run resumed from
its last checkpoint, and bit-exact comparison of checkpoint contents."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recon.config import TrainConfig
from recon.training.checkpoint import load_checkpoint
from recon.training.trainer import Trainer


def train_to_end(cfg: TrainConfig) -> Trainer:
    t = Trainer(cfg)
    t.setup()
    t.train()
    return t


def assert_same_tree(a, b, where: str = "scene") -> None:
    """Bit-exact equality of nested dicts of tensors (and plain values)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif torch.is_tensor(a):
        assert a.shape == b.shape and torch.equal(a, b), where
    else:
        assert a == b, where


class StopAt(Exception):
    """Raised from inside the training loop to stand for a crash."""


def interrupt_then_resume(cfg: TrainConfig, crash_step: int, checkpoint_step: int) -> Trainer:
    """Train ``cfg`` until step ``crash_step`` raises (the steps after the last checkpoint are lost),
    check that the last checkpoint is at ``checkpoint_step``, then train to the end in a new
    :class:`Trainer` that resumes from it (returned)."""
    t = Trainer(cfg)
    t.setup()
    original = t.train_step

    def stopping(step):
        if step == crash_step:
            raise StopAt()
        return original(step)

    t.train_step = stopping
    with pytest.raises(StopAt):
        t.train()
    assert load_checkpoint(Path(cfg.output) / "checkpoints" / "latest.pt")["step"] == checkpoint_step
    resumed = Trainer(cfg)
    resumed.setup()
    assert resumed.step == checkpoint_step
    resumed.train()
    return resumed
