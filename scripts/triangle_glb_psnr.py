"""Held-out PSNR of an exported triangle-mesh GLB rendered by an ordinary mesh renderer (CPU ray casting).

Usage: python scripts/triangle_glb_psnr.py <run folder> [--data DATA] [--downscale N]
Reads <run>/export/mesh.glb and the run's config (data, downscale, hold-out), renders the GLB from every
held-out camera with recon.eval.mesh_render and prints JSON: mesh PSNR, the run's own splat-render PSNR,
and the face counts of the GLB (trimesh) and of the checkpoint's scene.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import yaml


def main(argv: list[str]) -> int:
    run = Path(argv[0])
    from recon.config import train_config_from_dict
    from recon.eval.mesh_render import glb_psnr
    from recon.training.trainer import prepare_data

    cfg = train_config_from_dict(yaml.safe_load((run / "config.yml").read_text()))
    cfg.progress = False
    data = prepare_data(cfg, "cpu", need_train_views=False)
    glb = run / "export" / "mesh.glb"
    res = glb_psnr(glb, data.test_views, background=data.background)
    ckpt = torch.load(run / "checkpoints" / "latest.pt", map_location="cpu", weights_only=True)
    summary = json.loads((run / "summary.json").read_text())
    out = {
        "glb": str(glb),
        "glb_bytes": glb.stat().st_size,
        "mesh_render_psnr": res["psnr"],
        "mesh_render_psnr_per_view": res["per_view"],
        "glb_faces_trimesh": res["faces"],
        "scene_faces": int(ckpt["scene"]["faces"].shape[0]),
        "splat_render_eval": summary.get("eval"),
        "train_seconds": summary.get("train_seconds"),
        "test_views": len(data.test_views),
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
