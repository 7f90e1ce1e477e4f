"""Trainable methods by name (``recon-train --method``). See :mod:`recon.methods.base`."""

from __future__ import annotations

from recon.methods.base import Method, SplatMethod
from recon.methods.gaussians import GaussianMethod

METHODS: dict[str, type[Method]] = {GaussianMethod.name: GaussianMethod}

__all__ = ["METHODS", "Method", "SplatMethod", "GaussianMethod"]
