"""GaussianScene: initialisation, optimizer defaults, persistence, rendering and a densify round."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from recon.datasets.cameras import Camera
from recon.datasets.scene import SceneData
from recon.scenes import SCENES, GaussianOptimConfig, GaussianScene, SceneModel
from recon.scenes.gaussians import SH_C0, sh0_to_rgb
from recon.strategy import DefaultStrategy


def lattice(spacing: float = 0.5, n: int = 5) -> np.ndarray:
    g = np.arange(n) * spacing
    return np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)


def camera(width: int = 32, height: int = 24) -> Camera:
    """At the origin looking down +z (OpenCV)."""
    return Camera("cam", width, height, fx=30.0, fy=30.0, cx=width / 2, cy=height / 2, c2w=np.eye(4))


def test_registry_and_protocol():
    assert SCENES["gaussians"] is GaussianScene
    assert issubclass(GaussianScene, SceneModel)


def test_from_points_scale_from_neighbours():
    pts = lattice(0.5)
    colors = np.random.default_rng(0).integers(0, 256, (len(pts), 3), dtype=np.uint8)
    scene = GaussianScene.from_points(pts, colors, init_opacity=0.1)
    n = len(pts)
    assert scene.num_primitives == n and scene.sh_degree == 3
    shapes = {k: tuple(v.shape) for k, v in scene.params.items()}
    assert shapes == {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,), "sh0": (n, 1, 3), "shN": (n, 15, 3)}
    # on a lattice the 3 nearest neighbours are all one spacing away: scale = spacing, isotropic
    assert torch.allclose(scene.params["scales"].detach(), torch.full((n, 3), math.log(0.5)), atol=1e-6)
    # two clustered points next to a far one: scale = sqrt(mean squared distance to the others)
    few = GaussianScene.from_points(np.array([[0, 0, 0], [0.1, 0, 0], [0, 0.2, 0], [5, 5, 5.0]]))
    d = np.array([0.1, 0.2, math.sqrt(75)])
    assert math.isclose(math.exp(few.params["scales"][0, 0].item()), math.sqrt((d**2).mean()), rel_tol=1e-5)
    assert torch.allclose(torch.sigmoid(scene.params["opacities"].detach()), torch.full((n,), 0.1))
    assert torch.equal(scene.params["quats"].detach(), torch.tensor([1.0, 0, 0, 0]).expand(n, 4))
    assert torch.all(scene.params["shN"] == 0)
    rgb = sh0_to_rgb(scene.params["sh0"].detach()[:, 0])
    assert torch.allclose(rgb, torch.as_tensor(colors / 255.0, dtype=torch.float32), atol=1e-5)
    assert all(p.requires_grad and p.is_leaf for p in scene.params.values())
    # lower max degree, duplicate points (zero distance) stay finite, float colours accepted
    dup = GaussianScene.from_points(np.zeros((4, 3)), np.full((4, 3), 0.25), sh_degree=1)
    assert dup.params["shN"].shape == (4, 3, 3)
    assert torch.isfinite(dup.params["scales"]).all()
    assert torch.allclose(dup.params["sh0"].detach(), torch.full((4, 1, 3), (0.25 - 0.5) / SH_C0))
    assert GaussianScene.from_points(np.zeros((1, 3))).num_primitives == 1


def test_random_in_bounds_is_seeded_and_inside():
    a = GaussianScene.random_in_bounds([-1, 0, 2], [1, 1, 3], 500, seed=7)
    b = GaussianScene.random_in_bounds([-1, 0, 2], [1, 1, 3], 500, seed=7)
    c = GaussianScene.random_in_bounds([-1, 0, 2], [1, 1, 3], 500, seed=8)
    m = a.params["means"].detach()
    assert torch.equal(m, b.params["means"].detach()) and not torch.equal(m, c.params["means"].detach())
    assert torch.all(m >= torch.tensor([-1, 0, 2])) and torch.all(m <= torch.tensor([1, 1, 3]))


def test_from_scene_data_uses_points_or_random():
    moved = np.eye(4)
    moved[:3, 3] = [1.0, 0, 0]
    cams = [camera(), Camera("b", 32, 24, 30, 30, 16, 12, moved)]
    with_pts = SceneData(root=None, source="demo", cameras=cams, points=lattice().astype(np.float32),
                         point_colors=np.zeros((125, 3), np.uint8))
    assert GaussianScene.from_scene_data(with_pts).num_primitives == 125
    without = SceneData(root=None, source="demo", cameras=cams)
    assert GaussianScene.from_scene_data(without, random_points=300, sh_degree=0).num_primitives == 300


def test_optimizer_groups_and_schedule():
    scene = GaussianScene.random_in_bounds([-1] * 3, [1] * 3, 20, seed=0)
    cfg = GaussianOptimConfig(scene_scale=4.0)
    groups = scene.optimizer_groups(cfg)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == pytest.approx({"means": 1.6e-4 * 4, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2, "sh0": 2.5e-3, "shN": 2.5e-3 / 20})
    assert all(g["params"][0] is scene.params[g["name"]] for g in groups)
    opts = scene.make_optimizers(cfg)
    assert set(opts) == set(scene.params)
    for name, o in opts.items():
        assert isinstance(o, torch.optim.Adam)
        assert o.param_groups[0]["eps"] == 1e-15
        assert o.param_groups[0]["params"][0] is scene.params[name]
    DefaultStrategy().check_sanity(scene.params, opts)
    assert cfg.means_lr_at(0, 1000) == pytest.approx(1.6e-4 * 4)
    assert cfg.means_lr_at(1000, 1000) == pytest.approx(1.6e-6 * 4)
    assert cfg.means_lr_at(500, 1000) == pytest.approx(1.6e-5 * 4)  # geometric midpoint
    assert cfg.means_lr_at(5000, 1000) == pytest.approx(1.6e-6 * 4)
    cfg.apply_schedule(opts, 1000, 1000)
    assert opts["means"].param_groups[0]["lr"] == pytest.approx(1.6e-6 * 4)
    assert opts["scales"].param_groups[0]["lr"] == 5e-3


def test_state_dict_round_trip_keeps_the_dict_object():
    scene = GaussianScene.random_in_bounds([-1] * 3, [1] * 3, 30, seed=1, sh_degree=2)
    other = GaussianScene.random_in_bounds([-1] * 3, [1] * 3, 12, seed=2, sh_degree=2)
    buf = io.BytesIO()
    torch.save(other.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    params_ref = scene.params
    scene.load_state_dict(sd)
    assert scene.params is params_ref and scene.num_primitives == 12 and scene.sh_degree == 2
    for k, v in other.params.items():
        assert torch.equal(scene.params[k].detach(), v.detach())
        assert isinstance(scene.params[k], torch.nn.Parameter)
    with pytest.raises(ValueError, match="shape"):
        scene.load_state_dict({"sh_degree": 3, "params": sd["params"]})
    assert scene.sh_degree == 2 and scene.num_primitives == 12  # a failed load changes nothing


def _render_or_skip():
    try:
        from recon.rasterizers import render_gaussians  # noqa: F401
    except ImportError:
        pytest.skip("recon.rasterizers.render_gaussians is not available yet")


def small_scene(n: int = 40, seed: int = 0) -> GaussianScene:
    scene = GaussianScene.random_in_bounds([-1, -1, 2.5], [1, 1, 4], n, seed=seed, init_opacity=0.5)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # anisotropic and rotated, so every parameter gets a gradient
        scene.params["scales"].copy_(torch.log(torch.tensor([0.25, 0.1, 0.15])).expand(n, 3))
        scene.params["quats"].copy_(torch.randn(n, 4, generator=g))
    return scene


def test_render_smoke_and_gradients():
    _render_or_skip()
    scene = small_scene()
    cam = camera()
    out = scene.render(cam, background=torch.tensor([0.1, 0.2, 0.3]), sh_degree=1, render_depth=True)
    assert out.image.shape == (24, 32, 3) and out.alpha.shape == (24, 32, 1) and out.depth.shape == (24, 32, 1)
    assert torch.isfinite(out.image).all() and float(out.alpha.detach().max()) > 0.1
    assert out.meta["means2d"].shape == (40, 2) and out.meta["radii"].shape[0] == 40
    assert (out.meta["width"], out.meta["height"], out.meta["n_cameras"]) == (32, 24, 1)
    out.meta["means2d"].retain_grad()
    out.image.sum().backward()
    assert out.meta["means2d"].grad is not None
    for name in ("means", "quats", "scales", "opacities", "sh0"):
        g = scene.params[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    # degree 1 active: the bands above it get (zero) gradient only
    assert torch.all(scene.params["shN"].grad[:, 3:] == 0)
    # max degree (None) and degree 0 render too; distorted cameras are refused
    assert scene.render(cam).image.shape == (24, 32, 3)
    assert scene.render(cam, sh_degree=0).image.shape == (24, 32, 3)
    from recon.datasets.cameras import Distortion
    import dataclasses

    with pytest.raises(ValueError, match="distortion"):
        scene.render(dataclasses.replace(cam, distortion=Distortion("RADIAL", {"k1": 0.1, "k2": 0.0})))


def test_training_steps_with_densification():
    """The trainer's call order on the reference rasterizer: primitives grow, everything stays consistent."""
    _render_or_skip()
    torch.manual_seed(0)
    scene = small_scene(n=30)
    cam = camera()
    target = torch.zeros(24, 32, 3)
    target[:, :16] = 1.0
    cfg = GaussianOptimConfig(scene_scale=1.0)
    opts = scene.make_optimizers(cfg)
    strategy = DefaultStrategy(grow_grad2d=1e-9, grow_scale3d=0.1).scaled(0.01)  # refine every step from 5
    strategy.check_sanity(scene.params, opts)
    state = strategy.initialize_state(scene_scale=1.0, num_primitives=scene.num_primitives)
    counts = []
    for step in range(8):
        cfg.apply_schedule(opts, step, 8)
        out = scene.render(cam, sh_degree=0)
        strategy.step_pre_backward(scene.params, opts, state, step, out.meta)
        loss = (out.image - target).abs().mean()
        loss.backward()
        for o in opts.values():
            o.step()
            o.zero_grad(set_to_none=True)
        strategy.step_post_backward(scene.params, opts, state, step, out.meta)
        strategy.check_sanity(scene.params, opts)
        counts.append(scene.num_primitives)
    assert counts[-1] > 30
    assert all(state[k].shape[0] == scene.num_primitives for k in ("grad2d", "count", "radii"))
    for name, p in scene.params.items():
        assert opts[name].state[p]["exp_avg"].shape == p.shape
