"""``recon-export``: write a trained scene in formats other tools load.

``recon-export ply RUN`` writes the standard 3DGS PLY (f_dc_*, f_rest_*, opacity, scale_*, rot_*)
that common splat viewers open."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro
from rich.console import Console

from recon.cli.common import run_cli


@dataclass
class PlyExport:
    """Export Gaussians as a 3DGS PLY file."""

    run: tyro.conf.Positional[Path]
    """Run folder or checkpoint file."""
    output: Path | None = None
    """Output .ply path. Default: <run>/export/point_cloud.ply."""
    checkpoint: Literal["best", "latest"] = "latest"


def export_ply(cfg: PlyExport) -> int:
    from recon.cli.runs import load_run, run_dir_of

    scene, _, _, ckpt_path = load_run(cfg.run, cfg.checkpoint, "cpu")
    run_dir = run_dir_of(ckpt_path)
    out = cfg.output or (run_dir / "export" / "point_cloud.ply")
    scene.export(out)
    Console().print(f"wrote {out} ({scene.num_primitives:,} Gaussians)", highlight=False)
    return 0


def main() -> int:
    cmd = tyro.extras.subcommand_cli_from_dict({"ply": PlyExport})
    if isinstance(cmd, PlyExport):
        return export_ply(cmd)
    raise AssertionError(f"unhandled export command {cmd!r}")


def entrypoint() -> None:
    run_cli(main)


if __name__ == "__main__":
    entrypoint()
