"""Triangle methods on the CPU: strategy operations, tiny demo runs, bit-exact resume, config round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recon.config import TrainConfig, dump_config_yaml, train_config_from_dict
from recon.methods.triangles import OpaqueTriangleConfig, TriangleConfig
from recon.scenes.triangles import OpaqueTriangleScene, TriangleScene
from recon.strategy.base import Strategy
from recon.strategy.triangle import TriangleSoupStrategy, remove_faces, subdivide_faces
from helpers_training import assert_same_tree, interrupt_then_resume, train_to_end
from recon.training.checkpoint import load_checkpoint

SOUP = TriangleConfig(random_init_points=250, refine_start=4, refine_every=4, refine_stop=1000)
OPAQUE = OpaqueTriangleConfig(random_init_points=120, refine_start=4, refine_every=4, refine_stop=9, final_window=0.25)
TINY = dict(data="demo", downscale=4, progress=False, save_eval_renders=False, eval_every=1000, compress_schedules=False,
            sh_degree=1, sh_degree_interval=5, triangles=SOUP, opaque_triangles=OPAQUE)  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# strategy operations
# ---------------------------------------------------------------------------------------------------
def _soup(n=6):
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(n, 3, generator=g)
    scene = TriangleScene.from_points(pts, sh_degree=1)
    lrs = type("L", (), {"initial_lr": staticmethod(lambda name: 1e-3)})
    return scene, scene.make_optimizers(lrs)


def test_soup_refine_prunes_dead_subdivides_big_clones_small():
    scene, opts = _soup(6)
    params = scene.params
    # one optimizer step so Adam has moments to carry
    (params["vertices"].sum() + params["opacities"].sum() + params["sigmas"].sum() + params["sh0"].sum()).backward()
    for o in opts.values():
        o.step()
        o.zero_grad()
    strat = TriangleSoupStrategy(growth=1.5, prune_max_weight=0.05)
    state = strat.initialize_state(num_primitives=6)
    state["visible"][:] = 2
    state["max_weight"][:] = 0.5
    state["max_weight"][0] = 0.01  # dead: seen, never blended
    state["max_extent"][:] = 5.0
    state["max_extent"][1:4] = 100.0  # big: subdivided when picked
    parent_area = torch.linalg.cross(*(params["vertices"].detach()[1:4, [1, 2]] - params["vertices"].detach()[1:4, [0]]).unbind(1),
                                     dim=-1).norm(dim=-1).sum()  # fmt: skip
    info = strat.refine(params, opts, state, generator=torch.Generator().manual_seed(3))
    assert info["pruned"] == 1
    # target = 1.5 * 6 = 9 from 5 alive: budget 4 = one subdivision (+3) and one clone (+1), or 4 clones
    assert info["subdivided"] * 3 + info["cloned"] <= 4
    assert info["count"] == 6 - 1 - info["subdivided"] + 4 * info["subdivided"] + info["cloned"]
    Strategy().check_sanity(params, opts)
    assert all(float(state[k].abs().sum()) == 0 for k in ("max_weight", "visible", "max_extent"))
    assert state["vertices" if False else "max_weight"].shape[0] == info["count"]
    if info["subdivided"]:  # the children tile their parent: their areas sum to the parent's
        v = params["vertices"].detach()
        kids = v[-4 * info["subdivided"] - info["cloned"]: v.shape[0] - info["cloned"]] if info["cloned"] else v[-4 * info["subdivided"]:]
        area = torch.linalg.cross(kids[:, 1] - kids[:, 0], kids[:, 2] - kids[:, 0], dim=-1).norm(dim=-1).sum() / 2
        assert float(area) < float(parent_area) / 2 + 1e-5


def _opaque_pair():
    verts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [5, 5, 5]])
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    n = len(verts)
    params = {"vertices": verts, "weights": torch.arange(n, dtype=torch.float32), "sh0": torch.zeros(n, 1, 3),
              "shN": torch.zeros(n, 3, 3)}  # fmt: skip
    scene = OpaqueTriangleScene(params, faces, sh_degree=1)
    lrs = type("L", (), {"initial_lr": staticmethod(lambda name: 1e-3)})
    return scene, scene.make_optimizers(lrs)


def test_subdivide_shares_midpoints_and_remove_drops_orphans():
    scene, opts = _opaque_pair()
    new = subdivide_faces(scene, opts, torch.tensor([True, True]))
    assert new == 5  # 6 edge midpoints, the shared edge 1-2 only once
    assert scene.num_primitives == 8 and scene.num_vertices == 10
    mid12 = scene.params["vertices"].detach()[5:][(scene.params["vertices"].detach()[5:] - torch.tensor([0.5, 0.5, 0])).norm(dim=1) < 1e-6]
    assert len(mid12) == 1
    # new vertex parameters are the means of the edge's endpoints
    w = scene.params["weights"].detach()
    assert any(abs(float(x) - 1.5) < 1e-6 for x in w[5:])  # midpoint of vertices 1 and 2 (weights 1, 2)
    Strategy().check_sanity(scene.params, opts)
    # vertex 4 was never referenced: removing any face set drops it and remaps the rest
    removed, orphans = remove_faces(scene, opts, torch.zeros(8, dtype=torch.bool))
    assert removed == 0 and orphans == 1 and scene.num_vertices == 9
    assert int(scene.faces.max()) == 8
    mask = torch.zeros(8, dtype=torch.bool)
    mask[:4] = True
    removed, orphans = remove_faces(scene, opts, mask)
    assert removed == 4 and scene.num_primitives == 4 and int(scene.faces.max()) == scene.num_vertices - 1
    Strategy().check_sanity(scene.params, opts)


def test_delaunay_initialisation_faces_are_unique_and_local():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(200, 3, generator=g)
    scene = OpaqueTriangleScene.from_points(pts, sh_degree=0, max_edge_factor=3.0)
    f = torch.sort(scene.faces, dim=1).values
    assert len(torch.unique(f, dim=0)) == len(f) > 200
    v = scene.params["vertices"].detach()[scene.faces]
    longest = (v - v[:, [1, 2, 0]]).norm(dim=-1).amax(-1)
    loose = OpaqueTriangleScene.from_points(pts, sh_degree=0, max_edge_factor=1e9)
    assert loose.num_primitives > scene.num_primitives  # the long faces were dropped
    assert float(longest.max()) < 1.0


# ---------------------------------------------------------------------------------------------------
# end to end on the demo scene
# ---------------------------------------------------------------------------------------------------
def test_config_round_trip_keeps_triangle_sections(tmp_path):
    cfg = TrainConfig(output=tmp_path, method="opaque-triangles", **TINY)
    back = train_config_from_dict(__import__("yaml").safe_load(dump_config_yaml(cfg)))
    assert back.opaque_triangles == cfg.opaque_triangles and back.triangles == cfg.triangles
    assert back.method == "opaque-triangles"


@pytest.mark.parametrize("method", ["triangles", "opaque-triangles"])
def test_tiny_run_and_bit_exact_resume(tmp_path, method):
    n, k = 12, 6
    straight = train_to_end(TrainConfig(output=tmp_path / "a", method=method, steps=n, checkpoint_every=3, **TINY))
    summary = straight.last_eval
    assert summary is not None and summary["method"] == method
    exports = straight.export()
    assert exports["glb"].is_file()
    if method == "opaque-triangles":
        assert straight.scene.sigma < OPAQUE.sigma_start  # annealed
        assert straight.scene.weight_floor > OPAQUE.floor_start
    # the same run killed one step after its checkpoint at step k, then resumed by re-running it
    cfg_b = TrainConfig(output=tmp_path / "b", method=method, steps=n, checkpoint_every=3, **TINY)
    resumed = interrupt_then_resume(cfg_b, crash_step=k + 1, checkpoint_step=k)
    assert resumed.step == n
    assert_same_tree(load_checkpoint(tmp_path / "a" / "checkpoints" / "latest.pt")["scene"],
                     load_checkpoint(tmp_path / "b" / "checkpoints" / "latest.pt")["scene"])  # fmt: skip


def test_cli_runs_both_methods(tmp_path):
    from recon.cli.train import entrypoint  # noqa: F401 - the CLI module imports

    cfg = TrainConfig(output=tmp_path / "o", method="opaque-triangles", steps=3, **TINY)
    t = train_to_end(cfg)
    assert Path(t.run_dir / "config.yml").read_text().count("opaque_triangles") == 1


def test_opaque_method_trains_vertex_colours_and_supersamples_late():
    """By default the opaque method ends with one colour per vertex (what the GLB carries) and renders training
    views at 2x then 4x late in the run; evaluation renders at ``render_supersample``."""
    from recon.methods import METHODS

    def make_method(cfg, **kw):
        return METHODS[cfg.method](cfg, **kw)

    cfg = TrainConfig(output=Path("unused"), method="opaque-triangles", steps=60, **TINY)
    method = make_method(cfg, steps=60, scene_scale=1.0, device="cpu", background=torch.zeros(3))
    assert method.sh_degree == 0 and [method.sh_degree_at(s) for s in (0, 5, 59)] == [0, 0, 0]
    # SH (degree 1 here, raised every 5 steps) until 85 % of the run, then vertex colours only
    late = TrainConfig(output=Path("unused"), method="opaque-triangles", steps=60,
                       **{**TINY, "opaque_triangles": OpaqueTriangleConfig(vertex_colors_from=0.85)})  # fmt: skip
    late_method = make_method(late, steps=60, scene_scale=1.0, device="cpu", background=torch.zeros(3))
    assert late_method.sh_degree == 0 and [late_method.sh_degree_at(s) for s in (0, 5, 50, 51, 59)] == [0, 1, 1, 0, 0]
    assert [method.supersample_at(s) for s in (0, 39, 40, 49, 50, 59)] == [1, 1, 2, 2, 4, 4]
    vd = TrainConfig(output=Path("unused"), method="opaque-triangles", steps=60,
                     **{**TINY, "opaque_triangles": OpaqueTriangleConfig(vertex_colors_from=1.0)})  # fmt: skip
    sh_to_the_end = make_method(vd, steps=60, scene_scale=1.0, device="cpu", background=torch.zeros(3))
    assert sh_to_the_end.sh_degree == 1 and sh_to_the_end.sh_degree_at(59) == 1


def test_render_supersampled_is_the_area_average_of_the_large_render():
    import numpy as np

    from recon.datasets.cameras import Camera
    from recon.methods.base import render_supersampled
    from recon.rasterizers.types import RenderOutput

    cam = Camera(name="c", width=8, height=6, fx=10.0, fy=10.0, cx=4.0, cy=3.0, c2w=np.eye(4))
    seen = []

    def render(c):
        seen.append((c.width, c.height, c.fx, c.cx))
        yy, xx = torch.meshgrid(torch.arange(c.height), torch.arange(c.width), indexing="ij")
        img = torch.stack([xx, yy, xx * 0 + 1], -1).float()
        return RenderOutput(image=img, alpha=img[..., :1], depth=None, meta={"k": 1})

    out = render_supersampled(render, cam, 2)
    assert seen == [(16, 12, 20.0, 8.0)]
    assert out.image.shape == (6, 8, 3) and out.depth is None and out.meta == {"k": 1}
    assert torch.equal(out.image[..., 0], torch.arange(8).float().expand(6, 8) * 2 + 0.5)
    assert render_supersampled(render, cam, 1).image.shape == (6, 8, 3)
