"""Trainable methods by name (``recon-train --method``). See :mod:`recon.methods.base`."""

from __future__ import annotations

from recon.methods.base import Method, SplatMethod
from recon.methods.convexes import ConvexMethod
from recon.methods.gaussians import GaussianMethod
from recon.methods.surface import SurfaceMethod
from recon.methods.triangles import OpaqueTriangleMethod, TriangleMethod

METHODS: dict[str, type[Method]] = {GaussianMethod.name: GaussianMethod, SurfaceMethod.name: SurfaceMethod, ConvexMethod.name: ConvexMethod,
                                  TriangleMethod.name: TriangleMethod, OpaqueTriangleMethod.name: OpaqueTriangleMethod}

__all__ = ["METHODS", "Method", "SplatMethod", "GaussianMethod", "SurfaceMethod", "ConvexMethod", "TriangleMethod", "OpaqueTriangleMethod"]
