"""Densification strategies for splat scenes (gsplat-style: params dict + optimizers dict + state)."""

from __future__ import annotations

from recon.strategy import ops
from recon.strategy.base import Strategy
from recon.strategy.default import STATE_KEYS, DefaultStrategy
from recon.strategy.ops import duplicate, remove, reset_opacity, split

__all__ = ["Strategy", "DefaultStrategy", "STATE_KEYS", "ops", "duplicate", "split", "remove", "reset_opacity"]
