"""3DGS PLY export/import: exact layout, bit-exact round trip, a tolerant reader, clear errors."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from recon.errors import InputError
from recon.export.ply import ply_property_names, read_ply, read_ply_header, write_ply
from recon.scenes import GaussianScene

# The 3DGS layout written out by hand (degree 3), as every 3DGS viewer expects it.
EXPECTED_NAMES_DEG3 = (
    ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    + [f"f_rest_{i}" for i in range(45)]
    + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
)


def random_params(n: int, degree: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    p = {
        "means": torch.randn(n, 3, generator=g) * 10,
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.randn(n, 3, generator=g) - 3,
        "opacities": torch.randn(n, generator=g) * 4,
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.randn(n, k - 1, 3, generator=g) * 0.1,
    }
    if n > 0:  # awkward values must survive too
        p["means"][0] = torch.tensor([1e-38, -3.4e38, 0.1])
        p["opacities"][0] = -0.0
    return p


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_is_bit_exact(tmp_path, degree):
    params = random_params(257, degree, seed=degree)
    path = tmp_path / f"deg{degree}.ply"
    write_ply(path, params)
    back = read_ply(path)
    assert set(back) == set(params)
    for name, t in params.items():
        assert back[name].shape == t.shape, name
        assert back[name].dtype == torch.float32
        assert torch.equal(bits(back[name]), bits(t)), name


def test_header_matches_3dgs_layout(tmp_path):
    path = tmp_path / "g.ply"
    write_ply(path, random_params(3, 3))
    raw = path.read_bytes()
    header = raw[: raw.index(b"end_header\n") + len(b"end_header\n")].decode("ascii").splitlines()
    assert header[0] == "ply"
    assert header[1] == "format binary_little_endian 1.0"
    props = [ln.split() for ln in header if ln.startswith("property")]
    assert [p[2] for p in props] == EXPECTED_NAMES_DEG3
    assert all(p[1] == "float" for p in props)
    assert "element vertex 3" in header
    assert any(ln.startswith("comment") and "OpenCV/COLMAP" in ln for ln in header)
    assert ply_property_names(3) == EXPECTED_NAMES_DEG3
    assert len(ply_property_names(0)) == 17 and len(ply_property_names(1)) == 17 + 9
    # body is exactly N * 62 float32 values
    assert len(raw) - len("\n".join(header)) - 1 == 3 * 62 * 4
    info = read_ply_header(path)
    assert info["format"] == "binary_little_endian"
    assert info["elements"][0]["properties"] == EXPECTED_NAMES_DEG3


def test_f_rest_is_channel_major(tmp_path):
    n, degree = 2, 3
    params = random_params(n, degree)
    shN = torch.zeros(n, 15, 3)
    for k in range(15):
        for c in range(3):
            shN[:, k, c] = 100 * c + k
    params["shN"] = shN
    path = tmp_path / "g.ply"
    write_ply(path, params)
    raw = path.read_bytes()
    body = np.frombuffer(raw[raw.index(b"end_header\n") + 11 :], dtype="<f4").reshape(n, 62)
    f_rest = body[:, 9 : 9 + 45]
    for c in range(3):
        for k in range(15):
            assert f_rest[0, c * 15 + k] == 100 * c + k
    # normals are zero, quaternion is last, wxyz
    assert np.all(body[:, 3:6] == 0)
    np.testing.assert_array_equal(body[:, 58:62], params["quats"].numpy())


def _write_custom_ply(path, fmt: str, props: list[tuple[str, str]], rows: list[list[float]], extra_before: str = "", extra_after: bytes = b""):
    lines = ["ply", f"format {fmt} 1.0", "comment hand-made"]
    if extra_before:
        lines.append(extra_before)
    lines.append(f"element vertex {len(rows)}")
    lines += [f"property {t} {n}" for n, t in props]
    lines += ["element face 1", "property list uchar int vertex_indices", "end_header"]
    header = ("\n".join(lines) + "\n").encode("ascii")
    if fmt == "ascii":
        body = "".join(" ".join(repr(v) for v in r) + "\n" for r in rows).encode("ascii") + b"3 0 1 2\n"
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        codes = {"float": "f", "double": "d", "uchar": "B", "int": "i", "uint": "I", "short": "h", "char": "b"}
        body = b"".join(struct.pack(order + "".join(codes[t] for _, t in props), *r) for r in rows)
        body += struct.pack(order + "Biii", 3, 0, 1, 2)
    path.write_bytes(header + body + extra_after)


def _degree0_props(types: dict[str, str]) -> list[tuple[str, str]]:
    names = ["x", "y", "z", "red", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3"]
    return [(n, types.get(n, "float")) for n in names]


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian", "binary_big_endian"])
def test_reader_accepts_other_formats_types_and_extras(tmp_path, fmt):
    # doubles for positions, a uchar colour the reader must skip, an int opacity, a face element after
    props = _degree0_props({"x": "double", "y": "double", "z": "double", "red": "uchar", "opacity": "int"})
    rows = [
        [0.5, -1.25, 3.0, 200, 0.1, 0.2, 0.3, 2, -4.0, -4.5, -5.0, 1.0, 0.0, 0.0, 0.0],
        [1.5, 2.25, -3.0, 7, -0.1, -0.2, -0.3, -1, -1.0, -1.5, -2.0, 0.5, 0.5, 0.5, 0.5],
    ]
    path = tmp_path / f"{fmt}.ply"
    _write_custom_ply(path, fmt, props, rows)
    out = read_ply(path)
    assert out["shN"].shape == (2, 0, 3)
    np.testing.assert_allclose(out["means"].numpy(), [[0.5, -1.25, 3.0], [1.5, 2.25, -3.0]])
    np.testing.assert_allclose(out["sh0"].numpy().reshape(2, 3), [[0.1, 0.2, 0.3], [-0.1, -0.2, -0.3]], rtol=1e-6)
    np.testing.assert_allclose(out["opacities"].numpy(), [2, -1])
    np.testing.assert_allclose(out["quats"].numpy()[1], [0.5, 0.5, 0.5, 0.5])
    assert all(t.dtype == torch.float32 for t in out.values())


def test_reader_rejects_garbage(tmp_path):
    path = tmp_path / "garbage.ply"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(InputError, match="not a PLY file") as err:
        read_ply(path)
    assert str(path) in str(err.value)
    empty = tmp_path / "empty.ply"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="not a PLY file"):
        read_ply(empty)
    no_end = tmp_path / "noend.ply"
    no_end.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\n")
    with pytest.raises(InputError, match="not a PLY file"):
        read_ply(no_end)
    with pytest.raises(InputError, match="not found"):
        read_ply(tmp_path / "missing.ply")


def test_reader_rejects_truncated_binary(tmp_path):
    path = tmp_path / "g.ply"
    write_ply(path, random_params(10, 3))
    raw = path.read_bytes()
    cut = tmp_path / "cut.ply"
    cut.write_bytes(raw[:-100])
    with pytest.raises(InputError, match="truncated: expected 10 vertices") as err:
        read_ply(cut)
    assert str(cut) in str(err.value)


def test_reader_rejects_truncated_ascii(tmp_path):
    props = _degree0_props({})
    rows = [[float(i)] * len(props) for i in range(5)]
    path = tmp_path / "a.ply"
    _write_custom_ply(path, "ascii", props, rows)
    text = path.read_text().splitlines()
    # keep the header and 3 of the 5 vertex lines; make the header claim 5 and drop the face element
    head_end = text.index("end_header")
    header = [ln for ln in text[: head_end + 1] if "face" not in ln and "vertex_indices" not in ln]
    path.write_text("\n".join(header + text[head_end + 1 : head_end + 4]) + "\n")
    with pytest.raises(InputError, match="truncated: expected 5 vertices"):
        read_ply(path)


def test_reader_names_missing_property(tmp_path):
    props = [p for p in _degree0_props({}) if p[0] != "f_dc_0"]
    path = tmp_path / "nodc.ply"
    _write_custom_ply(path, "binary_little_endian", props, [[0.0] * len(props)])
    with pytest.raises(InputError, match="missing property f_dc_0") as err:
        read_ply(path)
    assert str(path) in str(err.value)
    # an f_rest count that fits no SH degree
    props = _degree0_props({}) + [(f"f_rest_{i}", "float") for i in range(6)]
    bad = tmp_path / "rest.ply"
    _write_custom_ply(bad, "binary_little_endian", props, [[0.0] * len(props)])
    with pytest.raises(InputError, match="f_rest"):
        read_ply(bad)


def test_scene_export_and_reload(tmp_path):
    scene = GaussianScene.random_in_bounds([-1, -1, -1], [1, 1, 1], 50, seed=3, sh_degree=2)
    with torch.no_grad():
        scene.params["shN"].normal_()
    path = tmp_path / "scene.ply"
    scene.export(path)
    again = GaussianScene.from_ply(path)
    assert again.sh_degree == 2 and again.num_primitives == 50
    for name, p in scene.params.items():
        assert torch.equal(bits(again.params[name].detach()), bits(p.detach())), name


def test_empty_scene_round_trip(tmp_path):
    path = tmp_path / "empty.ply"
    write_ply(path, random_params(0, 3))
    back = read_ply(path)
    assert back["means"].shape == (0, 3) and back["shN"].shape == (0, 15, 3)
