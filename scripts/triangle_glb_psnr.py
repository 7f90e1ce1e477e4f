"""Held-out PSNR of an exported triangle-mesh GLB rendered by an ordinary mesh renderer (CPU ray casting).

Usage: python scripts/triangle_glb_psnr.py <run folder> [--data DATA] [--supersample 1 4]
Reads <run>/export/mesh.glb and the run's config.yml (data, downscale, hold-out; ``--data`` replaces the
data path, e.g. when the run was trained on another machine), renders the GLB from every held-out camera
with recon.eval.mesh_render at each supersampling factor and prints JSON: the mesh-render PSNRs, the
run's own splat-render evaluation, and the face counts of the GLB (trimesh) and of the checkpoint's scene
(when the checkpoint is there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--data", default=None, help="data folder (default: the one in the run's config.yml)")
    ap.add_argument("--supersample", type=int, nargs="+", default=[1, 4], help="rays per pixel side (default: 1 4)")
    args = ap.parse_args(argv)
    from recon.config import train_config_from_dict
    from recon.eval.mesh_render import glb_psnr
    from recon.training.trainer import prepare_data

    run: Path = args.run
    raw = yaml.safe_load((run / "config.yml").read_text())
    if args.data:
        raw["data"] = args.data
    cfg = train_config_from_dict(raw)
    cfg.progress = False
    data = prepare_data(cfg, "cpu", need_train_views=False)
    glb = run / "export" / "mesh.glb"
    summary = json.loads((run / "summary.json").read_text())
    out: dict = {"glb": str(glb), "glb_bytes": glb.stat().st_size, "test_views": len(data.test_views)}
    for s in args.supersample:
        res = glb_psnr(glb, data.test_views, background=data.background, supersample=s)
        out[f"mesh_render_psnr_ss{s}"] = res["psnr"]
        out[f"mesh_render_psnr_ss{s}_per_view"] = res["per_view"]
        out["glb_faces_trimesh"] = res["faces"]
    ckpt_path = run / "checkpoints" / "latest.pt"
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        out["scene_faces"] = int(ckpt["scene"]["faces"].shape[0])
    out["splat_render_eval"] = summary.get("eval")
    out["train_seconds"] = summary.get("train_seconds")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
