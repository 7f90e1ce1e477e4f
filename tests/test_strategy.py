"""Densification: ops keep params / Adam moments / strategy state consistent; DefaultStrategy policy."""

from __future__ import annotations

import io
import math

import pytest
import torch

from recon.scenes import GaussianOptimConfig, GaussianScene
from recon.strategy import STATE_KEYS, DefaultStrategy, duplicate, remove, reset_opacity, split
from recon.strategy.ops import quat_to_rotmat

MOMENTS = ("exp_avg", "exp_avg_sq")


def make(n: int = 12, seed: int = 0, degree: int = 1):
    """A scene, its optimizers after one Adam step (non-zero moments), and an initialised state."""
    torch.manual_seed(seed)
    scene = GaussianScene.random_in_bounds([-1, -1, -1], [1, 1, 1], n, seed=seed, sh_degree=degree)
    with torch.no_grad():
        scene.params["quats"].copy_(torch.randn(n, 4))
        scene.params["opacities"].uniform_(-2, 2)
    opts = scene.make_optimizers(GaussianOptimConfig())
    for p in scene.params.values():
        p.grad = torch.randn_like(p)
    for o in opts.values():
        o.step()
        o.zero_grad(set_to_none=True)
    strategy = DefaultStrategy()
    state = strategy.initialize_state(scene_scale=1.0, num_primitives=n)
    state["grad2d"].copy_(torch.rand(n))
    state["count"].copy_(torch.randint(1, 5, (n,)).float())
    state["radii"].copy_(torch.rand(n))
    return scene, opts, strategy, state


def assert_consistent(scene, opts, state):
    n = scene.num_primitives
    DefaultStrategy().check_sanity(scene.params, opts)
    for name, p in scene.params.items():
        assert p.shape[0] == n, name
        assert opts[name].param_groups[0]["params"][0] is p
        st = opts[name].state[p]
        for m in MOMENTS:
            assert st[m].shape == p.shape, (name, m)
    for k in STATE_KEYS:
        assert state[k].shape == (n,), k


def snapshot(scene, opts, state):
    """Copies of the parameters, their Adam moments and the strategy statistics."""
    params = {k: v.detach().clone() for k, v in scene.params.items()}
    moments = {k: {m: opts[k].state[v][m].clone() for m in MOMENTS} for k, v in scene.params.items()}
    return params, moments, {k: state[k].clone() for k in STATE_KEYS}


def rows_mask(n, rows):
    mask = torch.zeros(n, dtype=torch.bool)
    mask[rows] = True
    return mask


def assert_rows_from(scene, opts, state, snap, rows, n_new=0):
    """A consistent state in which row i of every parameter and statistic is row ``rows[i]`` of the
    snapshot, and so are the Adam moments except for the last ``n_new`` rows (new primitives), whose
    moments are zero."""
    assert_consistent(scene, opts, state)
    before, mom, st_before = snap
    rows = torch.tensor(rows)
    n_old = len(rows) - n_new
    for name, p in scene.params.items():
        assert torch.equal(p.detach(), before[name][rows]), name
        for m in MOMENTS:
            v = opts[name].state[p][m]
            assert torch.equal(v[:n_old], mom[name][m][rows[:n_old]]), (name, m)
            assert torch.all(v[n_old:] == 0), (name, m)
    for k in STATE_KEYS:
        assert torch.equal(state[k], st_before[k][rows]), k


def test_duplicate_appends_copies_with_zero_moments():
    scene, opts, _, state = make()
    snap = snapshot(scene, opts, state)
    duplicate(scene.params, opts, state, rows_mask(12, [1, 4, 7]))
    assert scene.num_primitives == 15
    assert_rows_from(scene, opts, state, snap, list(range(12)) + [1, 4, 7], n_new=3)
    # the optimizer still works on the new tensors
    for p in scene.params.values():
        p.grad = torch.ones_like(p)
    for o in opts.values():
        o.step()


def test_split_children_statistics_and_moments():
    # one parent Gaussian replicated many times: the children sample N(mu, Sigma)
    m = 20000
    scene, opts, _, state = make(n=m, degree=0)
    q = torch.tensor([0.9, 0.1, -0.3, 0.2])
    log_s = torch.log(torch.tensor([0.3, 0.1, 0.05]))
    mu = torch.tensor([0.5, -1.0, 2.0])
    with torch.no_grad():
        scene.params["means"][:] = mu
        scene.params["quats"][:] = q
        scene.params["scales"][:] = log_s
    keep = 3
    mask = torch.ones(m, dtype=torch.bool)
    mask[:keep] = False
    parent_opa = scene.params["opacities"].detach()[keep:].clone()
    split(scene.params, opts, state, mask, generator=torch.Generator().manual_seed(0))
    assert scene.num_primitives == keep + 2 * (m - keep)
    assert_consistent(scene, opts, state)
    children = scene.params["means"].detach()[keep:].double()
    # mean preserved in expectation, covariance = R S^2 R^T
    assert torch.allclose(children.mean(0), mu.double(), atol=4e-3)
    R = quat_to_rotmat(q).double()
    sigma = R @ torch.diag(torch.exp(log_s).double() ** 2) @ R.T
    d = children - mu.double()
    assert torch.allclose(d.T @ d / len(d), sigma, atol=3e-3)
    # scales shrink by 1.6, other parameters copied, moments of children zero, unsplit rows first
    assert torch.allclose(scene.params["scales"].detach()[keep:], (log_s - math.log(1.6)).expand(2 * (m - keep), 3), atol=1e-6)
    assert torch.equal(scene.params["quats"].detach()[keep:], q.expand(2 * (m - keep), 4))
    assert torch.equal(scene.params["opacities"].detach()[keep:], parent_opa.repeat(2))
    for name, p in scene.params.items():
        for mm in MOMENTS:
            assert torch.all(opts[name].state[p][mm][keep:] == 0)
            if p.numel():
                assert not torch.all(opts[name].state[p][mm][:keep] == 0)


def test_split_revised_opacity():
    scene, opts, _, state = make(n=4)
    o = torch.sigmoid(scene.params["opacities"].detach()[2])
    mask = torch.tensor([False, False, True, False])
    split(scene.params, opts, state, mask, revised_opacity=True)
    child = torch.sigmoid(scene.params["opacities"].detach()[3:])
    assert torch.allclose(child, (1 - torch.sqrt(1 - o)).expand(2), atol=1e-6)


def test_remove_drops_exactly_the_masked_rows():
    scene, opts, _, state = make()
    snap = snapshot(scene, opts, state)
    remove(scene.params, opts, state, rows_mask(12, [0, 5, 11]))
    assert scene.num_primitives == 9
    assert_rows_from(scene, opts, state, snap, [i for i in range(12) if i not in (0, 5, 11)])


def test_reset_opacity_clamps_and_zeroes_moments():
    scene, opts, _, state = make(n=200)
    before = scene.params["opacities"].detach().clone()
    other = scene.params["means"]
    reset_opacity(scene.params, opts, state, value=0.01)
    o = scene.params["opacities"]
    assert torch.all(torch.sigmoid(o) <= 0.01)
    low = torch.sigmoid(before) <= 0.01
    assert torch.equal(o.detach()[low], before[low])
    for m in MOMENTS:
        assert torch.all(opts["opacities"].state[o][m] == 0)
    assert scene.params["means"] is other  # untouched
    assert_consistent(scene, opts, state)


def test_ops_work_before_the_first_optimizer_step_and_with_empty_state():
    scene = GaussianScene.random_in_bounds([-1, -1, -1], [1, 1, 1], 8, seed=0)
    opts = scene.make_optimizers()
    state = DefaultStrategy().initialize_state(2.0)  # sizes unknown yet: empty tensors
    mask = torch.zeros(8, dtype=torch.bool)
    mask[2] = True
    duplicate(scene.params, opts, state, mask)
    split(scene.params, opts, state, torch.arange(9) == 0)
    remove(scene.params, opts, state, torch.arange(10) == 3)
    assert scene.num_primitives == 9
    assert all(state[k].numel() == 0 for k in STATE_KEYS)
    DefaultStrategy().check_sanity(scene.params, opts)


def _info(means2d_grad, radii, width=200, height=100):
    m = torch.zeros_like(means2d_grad, requires_grad=True)
    m.grad = means2d_grad.clone()
    return {"means2d": m, "radii": radii, "width": width, "height": height, "n_cameras": 1}


def test_gradient_statistic_units_and_visibility():
    scene, opts, strategy, _ = make(n=4)
    state = strategy.initialize_state(1.0)
    g = torch.tensor([[1e-3, 0.0], [0.0, 2e-3], [3e-3, 4e-3], [1.0, 1.0]])
    radii = torch.tensor([5, 10, 20, 0])  # the last one is culled
    strategy.step_post_backward(scene.params, opts, state, 1, _info(g, radii))
    expect = torch.tensor([1e-3 * 100, 2e-3 * 50, math.hypot(3e-3 * 100, 4e-3 * 50), 0.0])
    assert torch.allclose(state["grad2d"], expect)
    assert torch.equal(state["count"], torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert torch.allclose(state["radii"], torch.tensor([5, 10, 20, 0]) / 200.0)
    # a second view accumulates; radii keep the max; per-axis radii [N, 2] are understood
    radii2 = torch.tensor([[1, 1], [30, 2], [0, 0], [4, 4]])
    strategy.step_post_backward(scene.params, opts, state, 2, _info(g, radii2))
    assert torch.equal(state["count"], torch.tensor([2.0, 2.0, 1.0, 1.0]))
    assert torch.allclose(state["radii"], torch.tensor([5, 30, 20, 4]) / 200.0)
    # batched cameras [C, N, 2] and packed layouts
    state_b = strategy.initialize_state(1.0)
    strategy.step_post_backward(scene.params, opts, state_b, 1, {**_info(g.expand(2, 4, 2), radii.expand(2, 4)), "n_cameras": 2})
    assert torch.allclose(state_b["grad2d"], 4 * expect)
    # two views rendered separately in one step (loss averaged): each view's gradient counts x2
    state_l = strategy.initialize_state(1.0)
    strategy.step_post_backward(scene.params, opts, state_l, 1, [_info(g, radii), _info(g, radii)])
    assert torch.allclose(state_l["grad2d"], 4 * expect) and torch.equal(state_l["count"], torch.tensor([2.0, 2, 2, 0]))
    state_p = strategy.initialize_state(1.0)
    info = _info(g[[2, 0]], torch.tensor([20, 5]))
    info["gaussian_ids"] = torch.tensor([2, 0])
    strategy.step_post_backward(scene.params, opts, state_p, 1, info, packed=True)
    assert torch.allclose(state_p["grad2d"], torch.tensor([expect[0], 0, expect[2], 0]))


def test_step_post_backward_grows_the_expected_primitives():
    n = 10
    scene, opts, strategy, _ = make(n=n)
    state = strategy.initialize_state(scene_scale=1.0, num_primitives=n)
    with torch.no_grad():
        scene.params["opacities"].fill_(0.0)  # o = 0.5, nothing is pruned
        scene.params["scales"].fill_(math.log(0.005))  # small: duplicate
        scene.params["scales"][[5, 6]] = math.log(0.5)  # large: split
    before = {k: v.detach().clone() for k, v in scene.params.items()}
    g = torch.full((n, 2), 1e-7)
    g[[1, 2, 5]] = 1e-5  # 1e-5 * 100 = 1e-3 > grow_grad2d
    step = 600  # > refine_start, multiple of refine_every, not a reset step
    report = strategy.step_post_backward(scene.params, opts, state, step, _info(g, torch.full((n,), 3)))
    assert report["duplicated"] == 2 and report["split"] == 1 and report["pruned"] == 0
    assert scene.num_primitives == n + 2 + 1 == report["num_primitives"]
    assert_consistent(scene, opts, state)
    means = scene.params["means"].detach()
    # rows: originals except 5, then copies of 1 and 2, then the two children of 5
    keep = [i for i in range(n) if i != 5]
    assert torch.equal(means[: n - 1], before["means"][keep])
    assert torch.equal(means[n - 1 : n + 1], before["means"][[1, 2]])
    assert torch.allclose(scene.params["scales"].detach()[n + 1 :], torch.full((2, 3), math.log(0.5 / 1.6)))
    # accumulators restart after a refinement
    assert all(torch.all(state[k] == 0) for k in STATE_KEYS)
    # not a refine step: only accumulation
    assert strategy.step_post_backward(scene.params, opts, state, 601, _info(torch.full((13, 2), 1.0), torch.full((13,), 3))) == {}
    assert scene.num_primitives == 13


def test_cap_max_is_never_exceeded_and_keeps_the_strongest():
    n = 20
    scene, opts, _, _ = make(n=n)
    strategy = DefaultStrategy(cap_max=n + 5)
    state = strategy.initialize_state(1.0, n)
    with torch.no_grad():
        scene.params["opacities"].fill_(0.0)
        scene.params["scales"].fill_(math.log(0.005))
    g = torch.zeros(n, 2)
    g[:, 0] = torch.linspace(1e-5, 2e-5, n)  # all above threshold, increasing
    before = scene.params["means"].detach().clone()
    report = strategy.step_post_backward(scene.params, opts, state, 600, _info(g, torch.full((n,), 3)))
    assert scene.num_primitives == n + 5
    assert report["capped"] == n - 5
    assert torch.equal(scene.params["means"].detach()[n:], before[n - 5 :])  # the 5 strongest
    # at the cap nothing grows any more
    g2 = torch.full((n + 5, 2), 1e-3)
    strategy.step_post_backward(scene.params, opts, state, 700, _info(g2, torch.full((n + 5,), 3)))
    assert scene.num_primitives <= n + 5


def test_prune_and_opacity_reset_schedule():
    n = 10
    scene, opts, _, _ = make(n=n)
    strategy = DefaultStrategy()
    state = strategy.initialize_state(1.0, n)
    with torch.no_grad():
        scene.params["opacities"].fill_(2.0)
        scene.params["opacities"][3] = -8.0  # sigmoid < 0.005
        scene.params["scales"].fill_(math.log(0.005))
        scene.params["scales"][7] = math.log(0.5)  # > prune_scale3d, pruned only after the first reset
    g = torch.zeros(n, 2)
    report = strategy.step_post_backward(scene.params, opts, state, 2000, _info(g, torch.full((n,), 3)))
    assert report["pruned"] == 1 and scene.num_primitives == 9
    report = strategy.step_post_backward(scene.params, opts, state, 3000, _info(torch.zeros(9, 2), torch.full((9,), 3)))
    assert report.get("opacity_reset") is True and report["pruned"] == 0
    assert torch.all(torch.sigmoid(scene.params["opacities"]) <= 2 * strategy.prune_opa)
    report = strategy.step_post_backward(scene.params, opts, state, 3100, _info(torch.zeros(9, 2), torch.full((9,), 3)))
    assert report["pruned"] == 1  # the big one, now that step > reset_every
    # opacity_reset=False (gsplat 1.5.3 behaviour) never resets; pause_refine_after_reset skips refinement
    quiet = DefaultStrategy(opacity_reset=False, pause_refine_after_reset=200)
    st = quiet.initialize_state(1.0, 8)
    assert "opacity_reset" not in quiet.step_post_backward(scene.params, opts, st, 3000, _info(torch.zeros(8, 2), torch.full((8,), 3)))
    assert quiet.step_post_backward(scene.params, opts, st, 3100, _info(torch.zeros(8, 2), torch.full((8,), 3))) == {}
    assert "pruned" in quiet.step_post_backward(scene.params, opts, st, 3200, _info(torch.zeros(8, 2), torch.full((8,), 3)))
    # nothing at all after refine_stop
    assert strategy.step_post_backward(scene.params, opts, state, 15000, _info(torch.ones(8, 2), torch.full((8,), 3))) == {}


def test_state_checkpoints_exactly_and_scaled_schedules():
    _, _, strategy, state = make()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=True)
    assert set(back) == {"grad2d", "count", "radii", "scene_scale"}
    assert all(torch.equal(back[k], state[k]) for k in STATE_KEYS) and back["scene_scale"] == state["scene_scale"]
    short = DefaultStrategy().scaled(0.1)
    assert (short.refine_start, short.refine_stop, short.refine_every, short.reset_every) == (50, 1500, 10, 300)
    assert DefaultStrategy().scaled(0.001).refine_every == 1
    assert short.grow_grad2d == DefaultStrategy().grow_grad2d


def test_check_sanity_catches_stale_optimizers():
    scene, opts, strategy, _ = make()
    strategy.check_sanity(scene.params, opts)
    stale = dict(scene.params)
    stale["means"] = torch.nn.Parameter(scene.params["means"].detach().clone())
    with pytest.raises(ValueError, match="stale"):
        strategy.check_sanity(stale, opts)
    with pytest.raises(ValueError, match="no optimizer"):
        strategy.check_sanity(scene.params, {k: v for k, v in opts.items() if k != "sh0"})
    with pytest.raises(RuntimeError, match="step_pre_backward"):
        info = {"means2d": torch.zeros(12, 2), "radii": torch.ones(12), "width": 10, "height": 10}
        strategy.step_post_backward(scene.params, opts, strategy.initialize_state(1.0), 1, info)


def test_resume_after_densification_restores_everything():
    """The trainer's checkpoint path: scene + per-name optimizers + strategy state, after N changed."""
    scene, opts, strategy, state = make(n=10)
    duplicate(scene.params, opts, state, torch.arange(10) % 3 == 0)
    remove(scene.params, opts, state, torch.arange(14) == 5)
    payload = {
        "scene": scene.state_dict(),
        "optimizers": {k: o.state_dict() for k, o in opts.items()},
        "strategy": state,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    fresh = GaussianScene.random_in_bounds([-1, -1, -1], [1, 1, 1], 3, seed=9, sh_degree=1)
    fresh.load_state_dict(loaded["scene"])
    fresh_opts = fresh.make_optimizers()
    for k, o in fresh_opts.items():
        o.load_state_dict(loaded["optimizers"][k])
    strategy.check_sanity(fresh.params, fresh_opts)
    assert fresh.num_primitives == 13
    for name, p in fresh.params.items():
        assert torch.equal(p.detach(), scene.params[name].detach())
        for m in MOMENTS:
            assert torch.equal(fresh_opts[name].state[p][m], opts[name].state[scene.params[name]][m])
        assert fresh_opts[name].param_groups[0]["lr"] == opts[name].param_groups[0]["lr"]
    for k in STATE_KEYS:
        assert torch.equal(loaded["strategy"][k], state[k])
