"""Exporters: the standard 3DGS PLY (more formats live next to it)."""

from __future__ import annotations

from recon.export.ply import ply_property_names, read_ply, read_ply_header, write_ply

__all__ = ["write_ply", "read_ply", "read_ply_header", "ply_property_names"]
