"""Real datasets in and out (issue 11): folders written the way VHAP and GaussianAvatars write
them, read back the way they read them.

Every fixture here is written by this file's own code following the upstream layouts
(formats.md §1-§2); the "reference" camera models are independent re-derivations of the
upstream maths, not their code.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny_flame_dict, write_pickle
from test_formats import random_avatar

from edit3dgs.cameras import Camera, load_cameras, look_at, read_camera_file
from edit3dgs.dataset import load_motion
from edit3dgs.errors import Edit3DGSError
from edit3dgs.flame_params import FlameParams
from edit3dgs.render import rasterize

GL = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV <-> OpenGL camera axes (its own inverse)
W, H = 275, 401
# An off-centre principal point (OpenCV, top-left): VHAP's json holds cy = H - 186.5 = 214.5,
# 28 px from the true 186.5 -- the error of reading it as top-left.
FX, FY, CX, CY = 520.0, 521.5, 150.0, 186.5


def psnr(a, b):
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 10 * math.log10(1.0 / max(mse, 1e-20))


def read_png(path):
    from PIL import Image

    return np.asarray(Image.open(path), np.float32) / 255.0


def cv_c2w(eye, target=(0.0, 0.0, 0.0)):
    """Camera-to-world in OpenCV axes (what a tracker such as VHAP holds before exporting)."""
    return look_at(np.asarray(eye, float), np.asarray(target, float)) @ GL


# -- fixture writers, following VHAP's export (formats.md §2) ------------------------------------

def vhap_frame(ti, ci, K, c2w_opencv, w=W, h=H, orig=None, flame_path=None):
    """One frame as VHAP's exporter writes it: opencv->opengl flips the y and z axes of the
    camera and the principal point's y (cy_json = h - cy)."""
    fx, fy, cx, cy = K
    c2w_gl = np.array(c2w_opencv, float)
    c2w_gl[:3, 1:3] *= -1
    name = f"{ti:05d}_{ci:02d}.png"
    fr = {"timestep_index": ti, "timestep_index_original": ti if orig is None else orig,
          "timestep_id": f"frame_{ti if orig is None else orig:05d}", "camera_index": ci, "camera_id": f"22{ci:04d}",
          "cx": cx, "cy": h - cy, "fl_x": fx, "fl_y": fy, "h": h, "w": w,
          "camera_angle_x": 2 * math.atan(w / (2 * fx)), "camera_angle_y": 2 * math.atan(h / (2 * fy)),
          "transform_matrix": c2w_gl.tolist(), "file_path": f"images/{name}", "fg_mask_path": f"fg_masks/{name}"}
    if flame_path is not None:
        fr["flame_param_path"] = flame_path
    return fr


def vhap_db(frames):
    return {"frames": frames, "timestep_indices": sorted({f["timestep_index"] for f in frames}),
            "camera_indices": sorted({f["camera_index"] for f in frames})}


# -- independent camera models -------------------------------------------------------------------

def vhap_pixel(frame, p, near=0.1, far=10.0):
    """Where VHAP's camera model puts world point p (top-left pixel coordinates): its OpenGL
    projection from the json intrinsics, NDC y flipped and mapped to the image as its exporter
    does for masks (formats.md §2)."""
    w, h, fx, fy, cx, cy = (frame[k] for k in ("w", "h", "fl_x", "fl_y", "cx", "cy"))
    proj = np.array([[2 * fx / w, 0, (w - 2 * cx) / w, 0], [0, 2 * fy / h, (h - 2 * cy) / h, 0],
                     [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)], [0, 0, -1, 0]])
    clip = proj @ np.linalg.inv(np.asarray(frame["transform_matrix"])) @ np.append(p, 1.0)
    ndc = clip[:3] / clip[3]
    ndc[1] *= -1
    return np.array([(ndc[0] * 0.5 + 0.5) * w, (ndc[1] * 0.5 + 0.5) * h])


def nerfstudio_pixel(frame, p):
    """nerfstudio's pinhole: ray direction ((u - cx) / fx, -(v - cy) / fy, -1) in OpenGL camera axes."""
    q = np.linalg.inv(np.asarray(frame["transform_matrix"])) @ np.append(p, 1.0)
    return np.array([frame["cx"] + frame["fl_x"] * q[0] / -q[2], frame["cy"] - frame["fl_y"] * q[1] / -q[2]])


def gaussianavatars_camera(frame, znear=0.01, zfar=100.0):
    """GaussianAvatars' reader and 3DGS's projection, re-derived: fovx = camera_angle_x,
    fovy = focal2fov(fov2focal(fovx, w), h), a symmetric frustum, ndc2Pix = ((ndc + 1) S - 1) / 2
    (pixel centres at integers). Returns (viewmat (4,4) OpenCV w2c, K) for ``rasterize``
    (whose pixel centres are at i + 0.5)."""
    w, h = frame["w"], frame["h"]
    c2w = np.array(frame["transform_matrix"], float)
    c2w[:3, 1:3] *= -1  # OpenGL/Blender axes -> COLMAP
    w2c = np.linalg.inv(c2w)
    fovx = frame["camera_angle_x"]
    fovy = 2 * math.atan(h / (2 * (w / (2 * math.tan(fovx / 2)))))
    top, right = math.tan(fovy / 2) * znear, math.tan(fovx / 2) * znear
    P = np.zeros((4, 4))
    P[0, 0], P[1, 1] = 2 * znear / (2 * right), 2 * znear / (2 * top)
    P[3, 2], P[2, 2], P[2, 3] = 1.0, zfar / (zfar - znear), -(zfar * znear) / (zfar - znear)
    # pixel = ((P00 x/z + 1) w - 1) / 2 + 0.5 in rasterize's convention = P00 w/2 x/z + w/2
    K = np.array([[P[0, 0] * w / 2, 0, w / 2], [0, P[1, 1] * h / 2, h / 2], [0, 0, 1]])
    return w2c, K


def blob_centre(cam: Camera, p):
    """Render one small round Gaussian at p; its alpha-weighted centroid (top-left pixel coordinates)."""
    vm = torch.tensor(cam.viewmat[None], dtype=torch.float32)
    K = torch.tensor(cam.K[None], dtype=torch.float32)
    res = rasterize(torch.tensor(np.asarray([p]), dtype=torch.float32), torch.tensor([[1.0, 0, 0, 0]]),
                    torch.full((1, 3), 0.004), torch.tensor([0.99]), torch.ones(1, 3), vm, K, cam.width, cam.height)
    a = res.alpha[0, ..., 0].double().numpy()
    ys, xs = np.mgrid[0:cam.height, 0:cam.width] + 0.5
    assert a.sum() > 1, "the blob is not in view"
    return np.array([(a * xs).sum() / a.sum(), (a * ys).sum() / a.sum()])


HEAD = np.array([0.02, -0.03, 0.05])


@pytest.mark.parametrize("eye", [(0.0, 0.0, 1.0), (0.5, 0.2, 0.85)])
def test_vhap_dataset_puts_the_head_where_vhap_does(tmp_path, eye):
    fr = vhap_frame(0, 3, (FX, FY, CX, CY), cv_c2w(eye))
    (tmp_path / "transforms_val.json").write_text(json.dumps(vhap_db([fr])))
    cf = read_camera_file(tmp_path / "transforms_val.json")
    assert cf.convention == "vhap" and "VHAP's keys" in cf.why
    cam = cf.cameras[0]
    want = vhap_pixel(fr, HEAD)
    # sanity: the reference is the tracker's own OpenCV projection
    q = np.linalg.inv(cv_c2w(eye)) @ np.append(HEAD, 1)
    np.testing.assert_allclose(want, [FX * q[0] / q[2] + CX, FY * q[1] / q[2] + CY], atol=1e-6)
    assert np.abs(cam.project(HEAD[None])[0][0] - want).max() < 1.0
    assert np.abs(blob_centre(cam, HEAD) - want).max() < 1.0


def test_nerfstudio_file_puts_the_head_where_nerfstudio_does(tmp_path):
    c2w_gl = cv_c2w((0.4, -0.1, 0.9)) @ GL
    fr = {"file_path": "images/0001.png", "transform_matrix": c2w_gl.tolist()}
    data = {"camera_model": "OPENCV", "w": W, "h": H, "fl_x": FX, "fl_y": FY, "cx": CX, "cy": CY,
            "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": [fr]}
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    cf = read_camera_file(tmp_path / "transforms.json")
    assert cf.convention == "nerfstudio" and "camera_model" in cf.why
    want = nerfstudio_pixel({**data, **fr}, HEAD)
    assert np.abs(blob_centre(cf.cameras[0], HEAD) - want).max() < 1.0


def test_convention_is_never_guessed(tmp_path, cli):
    """No evidence and an off-centre principal point: refused with the way out; chosen explicitly it loads."""
    fr = vhap_frame(0, 0, (FX, FY, CX, CY), cv_c2w((0, 0, 1.0)))
    for k in ("timestep_index_original", "timestep_id", "camera_id"):
        del fr[k]
    (tmp_path / "cams.json").write_text(json.dumps({"frames": [fr]}))
    with pytest.raises(Edit3DGSError, match="--camera-convention vhap|nerfstudio") as e:
        load_cameras(tmp_path / "cams.json")
    assert "cams.json" in str(e.value) and "off-centre principal point" in str(e.value)
    v = load_cameras(tmp_path / "cams.json", "vhap")[0]
    n = load_cameras(tmp_path / "cams.json", "nerfstudio")[0]
    assert v.cy == pytest.approx(CY) and n.cy == pytest.approx(H - CY)
    # centred principal points need no choice: both conventions agree
    fr.update(cx=W / 2, cy=H / 2)
    (tmp_path / "centred.json").write_text(json.dumps({"frames": [fr]}))
    cf = read_camera_file(tmp_path / "centred.json")
    assert cf.convention == "centred" and cf.cameras[0].cy == H / 2


# -- the CLI: which convention and camera model it used, GaussianAvatars' renders ---------------

@pytest.fixture()
def ga_avatar(tmp_path):
    """A GaussianAvatars model folder (point_cloud/iteration_N/, flame_param.npz beside the PLY,
    cfg_args) on a tiny random head given with --flame, and a VHAP-layout dataset with off-centre
    principal points and fl_x != fl_y."""
    head = write_pickle(tmp_path / "generic_model.pkl", tiny_flame_dict())
    it = tmp_path / "ga" / "point_cloud" / "iteration_600"
    it.mkdir(parents=True)
    a = random_avatar(N=300, F=60, seed=3)
    a.xyz.mul_(0.3)
    a.opacity.fill_(2.0)
    a.save_ply(it / "point_cloud.ply")
    p = FlameParams.neutral(3)
    p.translation[:, 0] = [0.0, 0.01, 0.02]
    p.save(it / "flame_param.npz")
    (tmp_path / "ga" / "cfg_args").write_text("Namespace(sh_degree=3)")
    ds = tmp_path / "subject"
    ds.mkdir()
    frames = [vhap_frame(t, c, (FX / 2, FY * 1.01 / 2, (CX + 9 * c) / 2, (CY - 6 * c) / 2), cv_c2w(eye), w=W // 2, h=H // 2)
              for t in range(3) for c, eye in enumerate([(0.0, 0.0, 1.0), (0.4, 0.1, 0.9)])]
    (ds / "transforms_val.json").write_text(json.dumps(vhap_db(frames)))
    return tmp_path / "ga", head, ds, frames


def test_gaussianavatars_avatar_renders_with_gaussianavatars_camera_model(ga_avatar, cli, tmp_path):
    from edit3dgs.bundle import open_avatar

    folder, head, ds, frames = ga_avatar
    code, out, err = cli("render", "--avatar", folder, "--flame", head, "--cameras", ds / "transforms_val.json",
                         "--timesteps", "1", "--device", "cpu", "--out", tmp_path / "r")
    assert code == 0, err
    assert "cy convention vhap" in err and "camera model: gaussianavatars" in err
    b = open_avatar(folder, flame=head)
    g = b.world(b.pose(timesteps=[1])[0])
    for fr in frames[:2]:
        w2c, K = gaussianavatars_camera(fr)
        ref = rasterize(g.means, g.quats, g.scales, g.opacities, g.sh, torch.tensor(w2c[None], dtype=torch.float32),
                        torch.tensor(K[None], dtype=torch.float32), fr["w"], fr["h"], sh_degree=g.sh_degree,
                        background=torch.ones(3)).rgb[0].clamp(0, 1).numpy()  # as PNG stores it
        ours = read_png(tmp_path / "r" / f"00001_{fr['camera_index']:02d}.png")
        assert ref.min() < 0.9, "the avatar is not in view"
        assert psnr(ours, ref) >= 40, psnr(ours, ref)
    # the file's own intrinsics are another camera: asked for, they give another image
    code, _, err = cli("render", "--avatar", folder, "--flame", head, "--cameras", ds / "transforms_val.json",
                       "--timesteps", "1", "--camera-model", "file", "--device", "cpu", "--out", tmp_path / "f")
    assert code == 0 and "camera model: file" in err
    assert psnr(read_png(tmp_path / "f" / "00001_01.png"), ref) < 30


def ga_cameras_json(path, frames):
    """A GaussianAvatars model folder's cameras.json as 3DGS writes it: a list, one entry per
    image, camera centre and camera-to-world rotation in OpenCV axes, fx/fy from the fovs."""
    out = []
    for i, fr in enumerate(frames):
        c2w = np.array(fr["transform_matrix"], float)
        c2w[:3, 1:3] *= -1
        fx = fr["w"] / (2 * math.tan(fr["camera_angle_x"] / 2))
        out.append({"id": i, "img_name": f"{fr['timestep_index']:05d}_{fr['camera_index']:02d}", "width": fr["w"],
                    "height": fr["h"], "position": c2w[:3, 3].tolist(), "rotation": [r.tolist() for r in c2w[:3, :3]],
                    "fy": fx, "fx": fx})
    path.write_text(json.dumps(out))


def test_gaussianavatars_cameras_json_is_a_camera_file(ga_avatar, cli, tmp_path):
    folder, head, ds, frames = ga_avatar
    ga_cameras_json(folder / "cameras.json", frames)
    cf = read_camera_file(folder / "cameras.json")
    assert cf.convention == "gaussianavatars" and [c.index for c in cf.cameras] == [0, 1]
    for cam, fr in zip(cf.cameras, frames[:2]):
        w2c, K = gaussianavatars_camera(fr)
        np.testing.assert_allclose(cam.viewmat, w2c, atol=1e-9)
        np.testing.assert_allclose(cam.K, K, rtol=1e-9)
    # accepted wherever a camera file is: render --cameras, and capture's default (the avatar's own)
    code, _, err = cli("render", "--avatar", folder, "--flame", head, "--cameras", folder / "cameras.json",
                       "--timesteps", "0", "--device", "cpu", "--out", tmp_path / "r")
    assert code == 0, err
    assert "GaussianAvatars cameras.json" in err and sorted(p.name for p in (tmp_path / "r").iterdir() if p.name != ".edit3dgs") == ["00000_00.png", "00000_01.png"]
    code, _, err = cli("capture", "--avatar", folder, "--flame", head, "--scale", "0.2", "--device", "cpu", "--out", tmp_path / "cap")
    assert code == 0, err
    # no camera 8 here: VHAP's split holds out the last camera
    assert [c.index for c in read_camera_file(tmp_path / "cap" / "transforms_train.json").cameras] == [0]
    assert [c.index for c in read_camera_file(tmp_path / "cap" / "transforms_val.json").cameras] == [1]


def test_edit_renders_its_views_with_the_camera_model_render_uses(ga_avatar, cli, tmp_path):
    """``edit`` and the server's edit job read a camera file as ``render`` does: a GaussianAvatars
    avatar's edit views are where GaussianAvatars renders it (its camera model by default),
    ``--camera-model file`` on request; which convention and model is said and recorded."""
    import shutil

    from edit3dgs.bundle import open_avatar
    from edit3dgs.loop import EditSession, EditSettings

    folder, head, ds, frames = ga_avatar
    # the head model travels with the avatar (avatar.json; no `kind`, so a GaussianAvatars avatar),
    # every vertex "scalp" so the region editor has a hair region
    shutil.copy(head, folder / "head_model.pkl")
    write_pickle(folder / "head_masks.pkl", {"scalp": np.arange(40)})
    (folder / "avatar.json").write_text(json.dumps({"head_model": "head_model.pkl", "head_masks": "head_masks.pkl"}))
    cams_file = ds / "transforms_val.json"
    b = open_avatar(folder)
    g = b.world(b.pose(timesteps=[1])[0])
    refs = []
    for fr in frames[:2]:
        w2c, K = gaussianavatars_camera(fr)
        refs.append(rasterize(g.means, g.quats, g.scales, g.opacities, g.sh, torch.tensor(w2c[None], dtype=torch.float32),
                              torch.tensor(K[None], dtype=torch.float32), fr["w"], fr["h"], sh_degree=g.sh_degree,
                              background=torch.ones(3)).rgb[0])
    for model, want in (("auto", "gaussianavatars"), ("file", "file")):
        s = EditSession(b, EditSettings(prompt="make the hair blue", camera_file=str(cams_file), timesteps=[1], scale=1.0,
                                        camera_model=model, device="cpu"))
        cams, _, _ = s.edit_set()
        rgb = s.render_set(b.gaussians, cams, [1], [])[0]
        assert s.camera_read.model == want and "cy convention vhap" in s.camera_read.describe()[0]
        for i in range(2):
            assert refs[i].min() < 0.9, "the avatar is not in view"
            assert (psnr(rgb[i].numpy(), refs[i].numpy()) >= 40) == (want == "gaussianavatars"), (model, i)
    # the command says it and edit.json records it
    code, _, err = cli("edit", "--avatar", folder, "--prompt", "make the hair blue", "--cameras", cams_file,
                       "--timesteps", "1", "--scale", "0.5", "--iters-per-batch", "1", "--device", "cpu", "--out", tmp_path / "ed")
    assert code == 0, err
    assert "cy convention vhap" in err and "camera model: gaussianavatars (a GaussianAvatars avatar" in err
    rec = json.loads((tmp_path / "ed" / "edit.json").read_text())
    assert rec["cameras"]["model"] == "gaussianavatars" and rec["cameras"]["convention"] == "vhap"
    # the server's edit job: the same choice, said in its result
    from test_server import Serve

    srv = Serve()
    try:
        assert srv.recv()[0] == "ready"
        srv.send("job", {"id": "e", "kind": "edit", "args": {
            "avatar": str(folder), "out_dir": str(tmp_path / "srv"),
            "settings": {"prompt": "make the hair blue", "camera_file": str(cams_file), "timesteps": [1], "scale": 0.5,
                         "iters_per_batch": 1, "camera_model": "file"}}})
        k, p = srv.until({"done", "error"}, "e")
    finally:
        srv.close()
    assert k == "done", p
    assert any("camera model: file (asked for)" in line for line in p["result"]["cameras"])
    assert json.loads((tmp_path / "srv" / "edit.json").read_text())["cameras"]["model"] == "file"


# -- frames by timestep_index across splits -----------------------------------------------------

def write_split_dataset(root, n_train=4, n_test=2):
    """train: timesteps 0..n_train-1 x cameras 0,1; val: same timesteps x camera 2; test: later
    timesteps x all cameras. Per-frame FLAME files named by a scrambled original index, so that
    file order is not timestep order; translation x = 0.01 * timestep_index."""
    root.mkdir()
    (root / "flame_param").mkdir()
    T = n_train + n_test
    orig = [7, 3, 9, 1, 5, 0, 8, 2][:T]
    for t in range(T):
        p = FlameParams.neutral(1)
        p.translation[0, 0] = 0.01 * t
        p.expr[0, 1] = t
        d = p.as_dict()
        d["shape"] = p.shape  # unbatched, as VHAP writes it
        np.savez(root / "flame_param" / f"{orig[t]:05d}.npz", **d)
    cams = [cv_c2w(e) for e in [(0.0, 0.0, 1.0), (0.3, 0.0, 0.95), (-0.3, 0.1, 0.95)]]

    def frames(ts, cs):
        return [vhap_frame(t, c, (40.0, 40.0, 16.0, 20.0), cams[c], w=32, h=40, orig=orig[t],
                           flame_path=f"flame_param/{orig[t]:05d}.npz") for t in reversed(ts) for c in cs]

    splits = {"train": frames(range(n_train), [0, 1]), "val": frames(range(n_train), [2]),
              "test": frames(range(n_train, T), [0, 1, 2])}
    for s, fr in splits.items():
        (root / f"transforms_{s}.json").write_text(json.dumps(vhap_db(fr)))
    return splits


def test_motion_rows_are_timestep_indices_across_splits(tmp_path):
    write_split_dataset(tmp_path / "ds")
    m = load_motion(tmp_path / "ds")
    assert m.num_timesteps == 6
    np.testing.assert_allclose(m.translation[:, 0], 0.01 * np.arange(6), atol=1e-7)
    np.testing.assert_array_equal(m.expr[:, 1], np.arange(6))
    assert m.shape.shape == (300,)


@pytest.fixture()
def tiny_avatar(tmp_path):
    d = tmp_path / "avatar"
    d.mkdir()
    write_pickle(d / "head_model.pkl", tiny_flame_dict())
    random_avatar(N=60, F=60).save_ply(d / "point_cloud.ply")
    FlameParams.neutral(2).save(d / "flame_param.npz")
    (d / "avatar.json").write_text(json.dumps({"head_model": "head_model.pkl"}))
    return d


def test_flame_params_dataset_timesteps_select_by_timestep_index(tiny_avatar, tmp_path, cli):
    ds = tmp_path / "ds"
    write_split_dataset(ds)
    cams = ds / "transforms_test.json"
    code, _, err = cli("render", "--avatar", tiny_avatar, "--cameras", cams, "--flame-params", ds,
                       "--timesteps", "5", "--camera-ids", "0", "--device", "cpu", "--out", tmp_path / "a")
    assert code == 0, err
    assert "timestep_index" in err
    # the same frame's own file, rendered as a one-timestep motion
    test = json.loads(cams.read_text())
    one = next(f["flame_param_path"] for f in test["frames"] if f["timestep_index"] == 5)
    code, _, err = cli("render", "--avatar", tiny_avatar, "--cameras", cams, "--flame-params", ds / one,
                       "--timesteps", "0", "--camera-ids", "0", "--device", "cpu", "--out", tmp_path / "b")
    assert code == 0, err
    a, b = read_png(tmp_path / "a" / "00005_00.png"), read_png(tmp_path / "b" / "00000_00.png")
    assert a.min() < 0.99 and np.array_equal(a, b)


# -- capture: read back the way GaussianAvatars' Scene and VHAP's NeRFDataset read -------------

def read_like_gaussianavatars(root):
    """GaussianAvatars' Scene: canonical_flame_param.npz marks a FLAME dataset; the three split
    files; per frame camera_angle_x, w, h, transform_matrix, file_path (+ .png), timestep_index,
    camera_index (when camera_id is present); meshes: first flame_param_path per timestep_index of
    train and test; then load_meshes' shapes."""
    assert (root / "canonical_flame_param.npz").is_file()
    cams, meshes = {}, {}
    for split in ("train", "val", "test"):
        db = json.loads((root / f"transforms_{split}.json").read_text())
        for fr in db["frames"]:
            path = fr["file_path"] if ".png" in fr["file_path"] else fr["file_path"] + ".png"
            assert (root / path).is_file()
            c2w = np.array(fr["transform_matrix"])
            c2w[:3, 1:3] *= -1
            fovx = fr["camera_angle_x"]
            focal = fr["w"] / (2 * math.tan(fovx / 2))
            fovy = 2 * math.atan(fr["h"] / (2 * focal))
            cam_id = fr["camera_index"] if "camera_id" in fr else None
            cams[(split, fr["timestep_index"], cam_id)] = (np.linalg.inv(c2w), fovx, fovy, fr["w"], fr["h"])
            if split != "val" and fr["timestep_index"] not in meshes:
                meshes[fr["timestep_index"]] = dict(np.load(root / fr["flame_param_path"]))
    T = max(meshes) + 1
    m0 = meshes[0]
    assert m0["shape"].ndim == 1 and m0["static_offset"].ndim == 3
    expr = np.zeros((T, m0["expr"].shape[1]), np.float32)
    for t, m in meshes.items():
        for k, w in (("rotation", 3), ("neck_pose", 3), ("jaw_pose", 3), ("eyes_pose", 6), ("translation", 3)):
            assert m[k].shape == (1, w), (k, m[k].shape)
        expr[t] = m["expr"][0]
    return cams, meshes, expr


def read_like_vhap(root):
    """VHAP's NeRFDataset on transforms.json: timestep_indices 0..N-1, per frame K from
    fl_x, fl_y, cx, cy, c2w, image, fg mask and flame_param npz."""
    db = json.loads((root / "transforms.json").read_text())
    assert len(db["timestep_indices"]) == max(db["timestep_indices"]) + 1
    out = []
    for fr in db["frames"]:
        K = np.eye(3)
        K[[0, 1, 0, 1], [0, 1, 2, 2]] = [fr["fl_x"], fr["fl_y"], fr["cx"], fr["cy"]]
        img = read_png(root / fr["file_path"])
        mask = read_png(root / fr["fg_mask_path"])
        flame = dict(np.load(root / fr["flame_param_path"], allow_pickle=True))
        out.append((fr, K, np.array(fr["transform_matrix"]), img, mask, flame))
    return db, out


def test_capture_loads_as_gaussianavatars_and_vhap_read_it(builtin_avatar_dir, cli, tmp_path):
    from edit3dgs.bundle import open_avatar

    step = 16  # few renders: the CPU rasterizer is the slow part
    code, _, err = cli("capture", "--avatar", builtin_avatar_dir, "--scale", "0.05", "--step", step, "--out", tmp_path / "cap")
    assert code == 0, err
    root = tmp_path / "cap"
    b = open_avatar(builtin_avatar_dir)
    rig = {c.index: c.resized(0.05) for c in load_cameras(builtin_avatar_dir / "cameras.json")}

    cams, meshes, expr = read_like_gaussianavatars(root)
    db, frames = read_like_vhap(root)
    T_train = b.params.num_timesteps
    n_train, n_test = len(range(0, T_train, step)), len(range(0, 8, step))  # the fixture's held-out sequence: 8 frames
    assert n_train > 1 and n_test > 0
    assert sorted(meshes) == db["timestep_indices"] == list(range(n_train + n_test))
    assert {k[0] for k in cams} == {"train", "val", "test"} and len(frames) == (n_train + n_test) * 16
    assert all(k[2] is not None for k in cams)  # camera_id present: GaussianAvatars keeps camera indices
    can = dict(np.load(root / "canonical_flame_param.npz"))
    assert can["shape"].shape == (b.params.shape.shape[0],) and can["static_offset"].shape == (1, b.head.n_verts, 3)
    np.testing.assert_allclose(can["jaw_pose"], [[0.3, 0, 0]])
    assert not can["expr"].any() and not can["rotation"].any() and not can["translation"].any()
    for fr, K, c2w, img, mask, flame in frames:
        cam = rig[fr["camera_index"]]
        assert img.shape == (fr["h"], fr["w"], 3) and mask.shape == (fr["h"], fr["w"])  # RGB; one-channel mask
        assert (fr["w"], fr["h"]) == (cam.width, cam.height) and fr["fl_x"] == fr["fl_y"]  # square pixels after --scale
        # cameras equal: VHAP's K (cy flipped back) and GaussianAvatars' fov camera are the rig's
        np.testing.assert_allclose(c2w, cam.c2w, atol=1e-9)
        np.testing.assert_allclose([K[0, 0], K[1, 1], K[0, 2], fr["h"] - K[1, 2]], [cam.fx, cam.fy, cam.cx, cam.cy], rtol=1e-9)
        w2c, fovx, fovy, w, h = cams[next(k for k in cams if k[1:] == (fr["timestep_index"], fr["camera_index"]))]
        np.testing.assert_allclose(w2c, cam.viewmat, atol=1e-9)
        assert w / (2 * math.tan(fovx / 2)) == pytest.approx(cam.fx) and h / (2 * math.tan(fovy / 2)) == pytest.approx(cam.fy)
        # the frame's FLAME parameters are the avatar's at timestep_index_original
        t0 = fr["timestep_index_original"]
        assert flame["shape"].shape == (300,) and flame["expr"].shape == (1, 100)
        if t0 < T_train:
            np.testing.assert_array_equal(flame["expr"][0], b.params.expr[t0])
            np.testing.assert_array_equal(flame["translation"][0], b.params.translation[t0])
        assert fr["file_path"] == f"images/{fr['timestep_index']:05d}_{fr['camera_index']:02d}.png"
    assert {fr["camera_index"] for fr, *_ in frames} == set(rig)  # every rig camera appears
    np.testing.assert_array_equal(expr[1], b.params.expr[step])


def test_written_cameras_use_vhaps_cy_and_read_back_equal(tmp_path):
    """Our own files (cameras.json, captures) are in VHAP's convention and say so: an off-centre
    principal point lands where VHAP's camera model puts it, and reads back unchanged."""
    from edit3dgs.cameras import save_cameras
    from edit3dgs.dataset import write_capture

    cam = Camera(4, W, H, FX, FY, CX, CY, look_at([0.3, 0.1, 0.95], [0, 0, 0]))
    save_cameras(tmp_path / "cameras.json", [cam])
    write_capture(tmp_path / "cap", {"train": ([0, 1], [cam])}, FlameParams.neutral(2), n_verts=40)
    for path in (tmp_path / "cameras.json", tmp_path / "cap" / "transforms.json", tmp_path / "cap" / "transforms_train.json"):
        data = json.loads(path.read_text())
        fr = data["frames"][0]
        assert data["camera_convention"] == "vhap" and fr["cy"] == pytest.approx(H - CY)
        np.testing.assert_allclose(vhap_pixel(fr, HEAD), cam.project(HEAD[None])[0][0], atol=1e-6)
        back = load_cameras(path)[0]
        np.testing.assert_allclose(back.K, cam.K, rtol=1e-12)
        np.testing.assert_allclose(back.viewmat, cam.viewmat, atol=1e-12)


def test_builtin_rig_reads_back_bit_identical(tmp_path):
    """The built-in avatar's cameras.json is now written in VHAP's convention: its centred principal
    points make that the same numbers, so the built-in avatar and the demo render exactly as before."""
    from edit3dgs.cameras import camera_rig, save_cameras

    rig = camera_rig()
    save_cameras(tmp_path / "cameras.json", rig)
    back = load_cameras(tmp_path / "cameras.json")
    for a, b in zip(rig, back):
        np.testing.assert_array_equal(a.K, b.K)
        np.testing.assert_array_equal(a.c2w, b.c2w)
        np.testing.assert_array_equal(a.scaled(0.25).K, b.scaled(0.25).K)


# -- bad input: one line each, nothing written -------------------------------------------------

def one_line_error(err, *needles):
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def _bad_render(cli, tiny_avatar, tmp_path, cams, *needles):
    out = tmp_path / "renders"
    code, _, err = cli("render", "--avatar", tiny_avatar, "--cameras", cams, "--device", "cpu", "--out", out)
    assert code == 2
    one_line_error(err, str(cams), *needles)
    assert not out.exists() and not list(tmp_path.glob(".renders*"))


def _good_frames():
    return [vhap_frame(0, c, (40.0, 40.0, 16.0, 20.0), cv_c2w(e), w=32, h=40) for c, e in enumerate([(0, 0, 1.0), (0.3, 0, 0.95)])]


def test_transforms_missing_intrinsics(tiny_avatar, cli, tmp_path):
    frames = _good_frames()
    del frames[1]["fl_x"], frames[1]["camera_angle_x"]
    (tmp_path / "t.json").write_text(json.dumps(vhap_db(frames)))
    _bad_render(cli, tiny_avatar, tmp_path, tmp_path / "t.json", "fl_x or camera_angle_x (frames[1])", "found neither")


def test_transforms_size_differs_from_image(tiny_avatar, cli, tmp_path):
    from PIL import Image

    frames = _good_frames()
    (tmp_path / "images").mkdir()
    Image.new("RGB", (32, 40), "white").save(tmp_path / frames[0]["file_path"])
    Image.new("RGB", (30, 40), "white").save(tmp_path / frames[1]["file_path"])
    (tmp_path / "t.json").write_text(json.dumps(vhap_db(frames)))
    _bad_render(cli, tiny_avatar, tmp_path, tmp_path / "t.json", "w, h equal to the size of images/00000_01.png",
                "w=32 h=40, image 30x40")


def test_transforms_duplicate_timestep_camera_pair(tiny_avatar, cli, tmp_path):
    frames = _good_frames()
    frames.append(dict(frames[0]))
    (tmp_path / "t.json").write_text(json.dumps(vhap_db(frames)))
    _bad_render(cli, tiny_avatar, tmp_path, tmp_path / "t.json", "(timestep_index, camera_index) pair once (frames[2])",
                "timestep_index 0, camera_index 0 also in frames[0]")


def test_dataset_pair_in_two_splits(tiny_avatar, cli, tmp_path):
    ds = tmp_path / "ds"
    splits = write_split_dataset(ds)
    (ds / "transforms_test.json").write_text(json.dumps(vhap_db(splits["test"] + splits["train"][:1])))
    out = tmp_path / "renders"
    code, _, err = cli("render", "--avatar", tiny_avatar, "--cameras", ds / "transforms_val.json", "--flame-params", ds,
                       "--device", "cpu", "--out", out)
    assert code == 2
    one_line_error(err, "transforms_test.json", "pair in one split only", "also in transforms_train.json")
    assert not out.exists()


# -- scaling, offsets, export up axis --------------------------------------------------------------

def test_resized_cameras_keep_square_pixels_and_the_centre():
    cam = Camera(0, 550, 802, 1200.0, 1200.0, 275.0, 401.0, look_at([0, 0, 1.0], [0, 0, 0]))
    for f in (0.25, 0.2, 0.37, 2.0):
        c = cam.resized(f)
        assert c.fx == c.fy == 1200.0 * f
        assert (c.cx, c.cy) == (c.width / 2, c.height / 2)
    off = Camera(0, 550, 802, 1200.0, 1210.0, 260.0, 380.0, cam.c2w)
    c = off.resized(0.25)
    assert c.fx / c.fy == off.fx / off.fy
    p = np.array([[0.03, -0.02, 0.05]])
    shift = np.array([c.width - 550 * 0.25, c.height - 802 * 0.25]) / 2
    np.testing.assert_allclose(c.project(p)[0], off.project(p)[0] * 0.25 + shift, atol=1e-9)


def test_offsets_of_either_shape_load_and_dynamic_offset_is_not_added(tmp_path):
    from edit3dgs.flame import FlameHead, load_flame_model

    base = FlameParams.neutral(2).as_dict()
    for so, n, want in [(np.ones((5023, 3)), 5023, (1, 5023, 3)), (np.ones((1, 5023, 3)), 5143, (1, 5143, 3)),
                        (np.ones((1, 5143, 3)), 5023, (1, 5023, 3))]:
        p = FlameParams.from_dict({**base, "static_offset": so, "dynamic_offset": np.ones((2,) + so.shape[-2:])}, n_verts=n)
        assert p.static_offset.shape == want and p.dynamic_offset.shape == (2,) + want[1:]
        assert p.static_offset[0, :5023].all() and not p.static_offset[0, 5023:].any()  # teeth: zero offsets
    one = FlameParams.from_dict({**FlameParams.neutral(1).as_dict(), "dynamic_offset": np.ones((40, 3))}, n_verts=40)
    assert one.dynamic_offset.shape == (1, 40, 3)
    with pytest.raises(Edit3DGSError, match=r"static_offset of shape \(1,40,3\)"):
        FlameParams.from_dict({**base, "static_offset": np.ones((1, 41, 3))}, n_verts=40)

    head = FlameHead(load_flame_model(write_pickle(tmp_path / "m.pkl", tiny_flame_dict())))
    p = FlameParams.neutral(2)
    p.jaw_pose[:, 0] = 0.2
    plain = head(p.to_torch())
    p.dynamic_offset = np.full((2, head.n_verts, 3), 0.05, np.float32)
    assert torch.equal(head(p.to_torch()), plain)  # as GaussianAvatars: taken, not added
    p.static_offset = np.full((1, head.n_verts, 3), 0.05, np.float32)
    assert not torch.allclose(head(p.to_torch()), plain)


def read_world_ply(path):
    from edit3dgs.avatar import WorldGaussians, read_ply_vertices

    c, names = read_ply_vertices(path)
    t = lambda *k: torch.from_numpy(np.stack([c[n] for n in k], 1))  # noqa: E731
    rest = sorted((n for n in names if n.startswith("f_rest_")), key=lambda n: int(n[7:]))
    K = 1 + len(rest) // 3
    sh = torch.cat([t("f_dc_0", "f_dc_1", "f_dc_2")[:, None], t(*rest).reshape(-1, 3, K - 1).transpose(1, 2)], 1)
    return WorldGaussians(t("x", "y", "z"), torch.nn.functional.normalize(t("rot_0", "rot_1", "rot_2", "rot_3"), dim=-1),
                          torch.exp(t("scale_0", "scale_1", "scale_2")), torch.sigmoid(torch.from_numpy(c["opacity"])),
                          sh, int(round(math.sqrt(K))) - 1)


def test_export_up_axis(tiny_avatar, cli, tmp_path):
    code, out, err = cli("export", "--avatar", tiny_avatar, "--timestep", "1", "--out", tmp_path / "up.ply")
    assert code == 0 and "up axis y" in out, err
    code, out, err = cli("export", "--avatar", tiny_avatar, "--timestep", "1", "--up", "-y", "--out", tmp_path / "down.ply")
    assert code == 0 and "up axis -y" in out, err
    up, down = read_world_ply(tmp_path / "up.ply"), read_world_ply(tmp_path / "down.ply")
    torch.testing.assert_close(down.means, up.means * torch.tensor([1.0, -1.0, -1.0]))
    # the turned scene seen from the turned camera is the same image (positions, shapes, view-dependent colour)
    c2w = look_at([0.4, 0.3, 0.9], [0, 0, 0])
    for g, m in ((up, c2w), (down, GL @ c2w)):
        cam = Camera(0, 64, 64, 70.0, 70.0, 32.0, 32.0, m)
        vm, K = torch.tensor(cam.viewmat[None], dtype=torch.float32), torch.tensor(cam.K[None], dtype=torch.float32)
        img = rasterize(g.means, g.quats, g.scales, g.opacities, g.sh, vm, K, 64, 64, sh_degree=g.sh_degree).rgb[0].numpy()
        if g is up:
            ref = img
    assert ref.max() > 0.05 and psnr(img, ref) > 50, psnr(img, ref)


def test_edit_set_keeps_square_pixels_after_scale(builtin_avatar_dir):
    """``edit --scale``: the edit cameras keep fl_x == fl_y (as ``render --scale`` does)."""
    from edit3dgs.bundle import open_avatar
    from edit3dgs.loop import EditSession, EditSettings

    s = EditSession(open_avatar(builtin_avatar_dir), EditSettings(prompt="make the hair blue", scale=0.2))
    cams, _, _ = s.edit_set()
    assert all(c.fx == c.fy for c in cams) and cams[0].width == 110
