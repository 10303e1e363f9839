"""GaussianAvatars formats: PLY and npz round trips, an independent writer, local->world."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edit3dgs.avatar import GaussianAvatar, face_frames, ply_attribute_names
from edit3dgs.flame_params import FlameParams


def random_avatar(N=50, F=20, degree=3, seed=0) -> GaussianAvatar:
    g = torch.Generator().manual_seed(seed)
    K = (degree + 1) ** 2
    return GaussianAvatar(
        xyz=torch.randn(N, 3, generator=g), features_dc=torch.randn(N, 1, 3, generator=g),
        features_rest=torch.randn(N, K - 1, 3, generator=g), opacity=torch.randn(N, 1, generator=g),
        scaling=torch.randn(N, 3, generator=g) - 3, rotation=torch.randn(N, 4, generator=g),
        binding=torch.randint(0, F, (N,), generator=g),
    )


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_ply_round_trip_is_bit_identical(tmp_path, degree):
    a = random_avatar(degree=degree)
    p1 = a.save_ply(tmp_path / "a.ply")
    b = GaussianAvatar.load_ply(p1, n_faces=20)
    p2 = b.save_ply(tmp_path / "b.ply")
    assert p1.read_bytes() == p2.read_bytes()
    for name in GaussianAvatar.PARAM_NAMES + ("binding",):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert b.sh_degree == degree


def test_independent_writer_in_gaussianavatars_order_loads_same_values(tmp_path):
    """A PLY written by hand (header + raw little-endian float32 rows) as GaussianAvatars writes it."""
    rng = np.random.default_rng(1)
    N = 7
    names = (["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(3)] + [f"f_rest_{i}" for i in range(45)]
             + ["opacity"] + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)] + ["binding_0"])
    data = rng.normal(size=(N, len(names))).astype("<f4")
    data[:, 3:6] = 0
    data[:, -1] = rng.integers(0, 10144, N)
    header = "ply\nformat binary_little_endian 1.0\nelement vertex %d\n" % N
    header += "".join(f"property float {n}\n" for n in names) + "end_header\n"
    path = tmp_path / "point_cloud.ply"
    path.write_bytes(header.encode() + data.tobytes())

    a = GaussianAvatar.load_ply(path, n_faces=10144)
    col = {n: data[:, i] for i, n in enumerate(names)}
    np.testing.assert_array_equal(a.xyz.numpy(), np.stack([col["x"], col["y"], col["z"]], 1))
    np.testing.assert_array_equal(a.features_dc[:, 0].numpy(), np.stack([col[f"f_dc_{i}"] for i in range(3)], 1))
    # channel-major f_rest: f_rest_0..14 are red, 15..29 green, 30..44 blue
    np.testing.assert_array_equal(a.features_rest[:, 0, 0].numpy(), col["f_rest_0"])
    np.testing.assert_array_equal(a.features_rest[:, 0, 1].numpy(), col["f_rest_15"])
    np.testing.assert_array_equal(a.features_rest[:, 14, 2].numpy(), col["f_rest_44"])
    np.testing.assert_array_equal(a.opacity[:, 0].numpy(), col["opacity"])
    np.testing.assert_array_equal(a.rotation.numpy(), np.stack([col[f"rot_{i}"] for i in range(4)], 1))
    np.testing.assert_array_equal(a.binding.numpy(), col["binding_0"].astype(np.int64))
    # and our writer produces exactly those bytes for the same values
    assert a.save_ply(tmp_path / "ours.ply").read_bytes() == path.read_bytes()
    assert ply_attribute_names(3) == names


def test_flame_param_npz_round_trip_is_bit_identical(tmp_path):
    rng = np.random.default_rng(2)
    T, V = 5, 30
    p = FlameParams(
        shape=rng.normal(size=300).astype(np.float32), expr=rng.normal(size=(T, 100)).astype(np.float32),
        rotation=rng.normal(size=(T, 3)).astype(np.float32), neck_pose=rng.normal(size=(T, 3)).astype(np.float32),
        jaw_pose=rng.normal(size=(T, 3)).astype(np.float32), eyes_pose=rng.normal(size=(T, 6)).astype(np.float32),
        translation=rng.normal(size=(T, 3)).astype(np.float32),
        static_offset=rng.normal(size=(1, V, 3)).astype(np.float32), dynamic_offset=np.zeros((T, V, 3), np.float32),
    )
    p1 = p.save(tmp_path / "a.npz")
    q = FlameParams.load(p1, n_verts=V)
    p2 = q.save(tmp_path / "b.npz")
    assert p1.read_bytes() == p2.read_bytes()
    for k, v in p.as_dict().items():
        np.testing.assert_array_equal(v, getattr(q, k))


def test_local_to_world_matches_hand_computed_triangle():
    # v0=(1,1,1), v1=(1,1,3), v2=(1,4,1):  a0=(0,0,1), a1=(-1,0,0), a2=(0,-1,0), k=(2+3)/2=2.5
    verts = torch.tensor([[1.0, 1, 1], [1, 1, 3], [1, 4, 1]])
    faces = torch.tensor([[0, 1, 2]])
    center, R, k = face_frames(verts, faces)
    torch.testing.assert_close(center[0], torch.tensor([1.0, 2.0, 5 / 3]))
    torch.testing.assert_close(R[0], torch.tensor([[0.0, -1, 0], [0, 0, -1], [1, 0, 0]]))
    assert k[0].item() == pytest.approx(2.5)

    s45 = math.sqrt(0.5)
    g = GaussianAvatar(
        xyz=torch.tensor([[1.0, 0.0, 0.0], [0.2, -0.4, 0.6]]),
        features_dc=torch.zeros(2, 1, 3), features_rest=torch.zeros(2, 0, 3),
        opacity=torch.tensor([[0.0], [2.0]]), scaling=torch.log(torch.tensor([[0.1, 0.2, 0.3], [1.0, 1.0, 1.0]])),
        rotation=torch.tensor([[2.0, 0, 0, 0], [s45 * 3, 0, 0, s45 * 3]]),  # not normalised on purpose
        binding=torch.tensor([0, 0]),
    )
    w = g.to_world(verts, faces)
    torch.testing.assert_close(w.means[0], torch.tensor([1.0, 2.0, 5 / 3 + 2.5]))
    # R @ (0.2,-0.4,0.6) = (0.4, -0.6, 0.2)
    torch.testing.assert_close(w.means[1], 2.5 * torch.tensor([0.4, -0.6, 0.2]) + torch.tensor([1.0, 2.0, 5 / 3]))
    torch.testing.assert_close(w.scales[0], torch.tensor([0.25, 0.5, 0.75]))
    torch.testing.assert_close(w.opacities, torch.sigmoid(torch.tensor([0.0, 2.0])))

    def mat(q):
        w_, x, y, z = q.tolist()
        return torch.tensor([[1 - 2 * (y * y + z * z), 2 * (x * y - w_ * z), 2 * (x * z + w_ * y)],
                             [2 * (x * y + w_ * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w_ * x)],
                             [2 * (x * z - w_ * y), 2 * (y * z + w_ * x), 1 - 2 * (x * x + y * y)]])

    torch.testing.assert_close(mat(w.quats[0]), R[0], atol=1e-5, rtol=0)
    rz90 = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    torch.testing.assert_close(mat(w.quats[1]), R[0] @ rz90, atol=1e-5, rtol=0)
    torch.testing.assert_close(w.quats.norm(dim=-1), torch.ones(2))
