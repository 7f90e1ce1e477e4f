"""``recon-train --method convexes`` on the CPU: the demo trains through the shared trainer (eval JSON,
export, config round trip), resume is bit-exact, and the 3DCS densification moves parameters, Adam
moments and strategy state consistently. Tiny settings: seconds per test."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from helpers_training import assert_same_tree, interrupt_then_resume, train_to_end
from recon.config import TrainConfig, dump_config_yaml, train_config_from_dict
from recon.methods.convexes import ConvexConfig
from recon.scenes.convexes import ConvexScene
from recon.strategy.convex import ConvexStrategy, split_into_children
from recon.training.checkpoint import load_checkpoint
from recon.training.trainer import Trainer

# Explicit short schedule (not compressed): a split and a reset happen within a few dozen steps. Sharper
# initial edges than 3DCS's keep the supports (and so the CPU reference's work) small at 160x120.
FAST = ConvexStrategy(grow_sigma_grad=0.0, refine_start=8, refine_every=8, refine_stop=20, reset_every=16, cap_max=330)
CONVEX = ConvexConfig(points_per_convex=5, init_sigma=0.05, strategy=FAST)
TINY = dict(data="demo", method="convexes", random_init_points=60, progress=False, save_eval_renders=False, eval_every=1000,
            compress_schedules=False, sh_degree=1, sh_degree_interval=10, downscale=2, convexes=CONVEX)  # fmt: skip


def train(out: Path, **kw) -> Trainer:
    return train_to_end(TrainConfig(output=out, **{**TINY, **kw}))


def test_demo_trains_and_writes_the_shared_outputs(tmp_path):
    t = train(tmp_path / "run", steps=24)
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "convexes" and summary["steps"] == 24
    assert summary["num_primitives"] > 60  # the split at step 16 grew the scene (1 parent -> 5 children)
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["method"] == "convexes" and results["num_views"] > 0 and results["psnr"] > 5
    # the export reads back as the same convexes
    exported = ConvexScene.from_ply(run / "export" / "convexes.ply")
    for name, p in t.scene.params.items():
        torch.testing.assert_close(exported.params[name], p.detach().cpu(), rtol=0, atol=0)
    # config.yml round-trips with the convexes section
    cfg = train_config_from_dict(__import__("yaml").safe_load((run / "config.yml").read_text()))
    assert cfg.convexes == CONVEX and cfg.method == "convexes"
    assert dump_config_yaml(cfg) == (run / "config.yml").read_text()


def test_resume_equals_straight_run(tmp_path):
    n, k = 24, 12
    straight = train(tmp_path / "a", steps=n, checkpoint_every=4)
    cfg_b = TrainConfig(output=tmp_path / "b", steps=n, checkpoint_every=4, **TINY)
    resumed = interrupt_then_resume(cfg_b, crash_step=k + 2, checkpoint_step=k)
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "latest.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "latest.pt")
    assert_same_tree(a["scene"], b["scene"])
    assert_same_tree(a["method_state"], b["method_state"], "method_state")
    assert straight.scene.num_primitives == resumed.scene.num_primitives


def test_split_into_children_geometry_and_optimizer_state():
    g = torch.Generator().manual_seed(0)
    k = 4
    params = {
        "points": torch.randn(3, k, 3, generator=g), "deltas": torch.randn(3, generator=g),
        "sigmas": torch.randn(3, generator=g) - 5, "opacities": torch.randn(3, generator=g),
        "sh0": torch.randn(3, 1, 3, generator=g), "shN": torch.randn(3, 3, 3, generator=g),
    }  # fmt: skip
    scene = ConvexScene(params, sh_degree=1)
    opts = scene.make_optimizers()
    # give every parameter some Adam state
    sum(p.square().sum() for p in scene.params.values()).backward()
    for o in opts.values():
        o.step()
    state = {"sigma_grad": torch.tensor([1.0, 2.0, 3.0]), "count": torch.ones(3), "scene_scale": 1.0}
    parent = scene.params["points"].detach()[1].clone()
    o_parent = torch.sigmoid(scene.params["opacities"].detach()[1])
    sig_parent = scene.params["sigmas"].detach()[1].clone()
    split_into_children(scene.params, opts, state, torch.tensor([False, True, False]), scale=0.5, sigma_factor=0.8)
    assert scene.num_primitives == 2 + k
    ConvexStrategy().check_sanity(scene.params, opts)
    c = parent.mean(0)
    children = scene.params["points"].detach()[2:]
    for i in range(k):  # child i: the parent halved about its centroid, moved to parent point i
        torch.testing.assert_close(children[i], parent[i] + 0.5 * (parent - c))
    torch.testing.assert_close(torch.sigmoid(scene.params["opacities"].detach()[2:]), (o_parent / 2).expand(k))
    torch.testing.assert_close(scene.params["sigmas"].detach()[2:], (sig_parent * 0.8).expand(k))
    assert state["sigma_grad"].tolist() == [1.0, 3.0] + [2.0] * k
    moments = opts["points"].state[scene.params["points"]]["exp_avg"]
    assert moments.shape == (2 + k, k, 3) and (moments[2:] == 0).all() and (moments[:2] != 0).any()


def test_strategy_accumulates_sigma_gradient_of_visible_convexes():
    from recon.datasets.demo import demo_cameras

    cam = demo_cameras(width=40, height=30, n_views=4)[0]
    scene = ConvexScene.random_in_bounds([-0.5, -0.5, -0.5], [0.5, 0.5, 0.5], 30, seed=1, k=5, init_sigma=0.05, sh_degree=0)
    with torch.no_grad():
        scene.params["opacities"][:5] = -10.0  # below alpha_min: culled, never visible
    opts = scene.make_optimizers()
    strategy = ConvexStrategy(refine_start=1000)
    state = strategy.initialize_state(num_primitives=scene.num_primitives)
    out = scene.render(cam, backend="reference")
    strategy.step_pre_backward(scene.params, opts, state, 0, out.meta)
    out.image.square().mean().backward()
    strategy.step_post_backward(scene.params, opts, state, 0, out.meta)
    vis = out.meta["radii"] > 0
    assert vis.any() and (~vis).any()
    torch.testing.assert_close(state["sigma_grad"], out.meta["sigmas"].grad.abs() * vis)
    assert (state["count"] == vis.float()).all()
    assert (state["sigma_grad"][vis] > 0).all()
