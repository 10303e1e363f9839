"""CLIP-S / CLIP-C (formats.md §6) and the `edit3dgs eval` command."""

from __future__ import annotations

import json

import pytest
import torch

import torch.nn.functional as F

from edit3dgs import eval as ev
from edit3dgs.eval import clip_consistency, clip_directional_similarity, format_table, PAPER_ROWS, SettingResult


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These small renders and tiny CLIPs run fastest on one thread (a busy 2-core machine otherwise
    spends most of the time in OpenMP waits)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _unit(v):
    v = torch.tensor(v, dtype=torch.float64)
    return v / v.norm()


def test_clip_scores_match_a_hand_computation():
    o = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]])
    e = torch.tensor([[0.0, 0.0, 2.0], [0.0, 3.0, 4.0], [0.0, 0.6, 0.8]])
    to, te = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 5.0])
    # By hand: d_img_i = e_i/|e_i| - o_i/|o_i|, d_txt = te/|te| - to/|to|, CLIP-S_i = cos(d_img_i, d_txt).
    d_img = [_unit(ei) - _unit(oi) for ei, oi in zip(e.tolist(), o.tolist())]
    d_txt = _unit(te.tolist()) - _unit(to.tolist())
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    s = clip_directional_similarity(o, e, to, te)
    assert s.tolist() == pytest.approx([cos(d, d_txt) for d in d_img], abs=1e-6)
    assert s[0].item() == pytest.approx(cos(torch.tensor([-1.0, 0, 1], dtype=torch.float64), d_txt), abs=1e-6)
    c = clip_consistency(o, e)
    assert c.tolist() == pytest.approx([cos(d_img[0], d_img[1]), cos(d_img[1], d_img[2])], abs=1e-6)


def test_table_lists_the_paper_rows_beside_ours():
    res = {"novel_view": SettingResult(0.2, 0.9, 8), "self_reenactment": None, "cross_identity": SettingResult(0.1, 0.8, 8)}
    table = format_table(res)
    assert "0.258 | 0.978" in table and "0.074 | 0.945" in table and "0.200 | 0.900 | n/a | n/a | 0.100 | 0.800" in table
    assert len(table.splitlines()) == 2 + len(PAPER_ROWS) + 1 and "not comparable" not in table
    res = {"novel_view": SettingResult(None, 0.9, 8, comparable=False)}
    last = format_table(res).splitlines()[-1]
    assert "not comparable" in last and "n/a | 0.900" in last


class StubScorer:
    """CLIP stand-in: an image's embedding is the mean colour of each of its quadrants; a caption's
    is a fixed random vector. Records the captions it is asked to embed."""

    asked: list = []
    comparable = True

    def __init__(self, model, device="cpu"):
        pass

    @staticmethod
    def embed(images):
        h, w = images.shape[1] // 2, images.shape[2] // 2
        quads = [images[:, :h, :w], images[:, :h, w:], images[:, h:, :w], images[:, h:, w:]]
        return torch.cat([q.mean((1, 2)) for q in quads], -1).double()

    def images(self, images):
        return F.normalize(self.embed(images), dim=-1).float()

    def texts(self, texts):
        StubScorer.asked.append(list(texts))
        out = []
        for t in texts:
            g = torch.Generator().manual_seed(sum(map(ord, t)) * 7919 + len(t))
            out.append(torch.randn(12, generator=g))
        return F.normalize(torch.stack(out), dim=-1)


def _reddened(builtin_avatar_dir, folder):
    from edit3dgs.bundle import open_avatar

    b = open_avatar(builtin_avatar_dir)
    g = b.gaussians.clone()
    g.features_dc[..., 0] += 0.8            # a reddened copy stands in for an edit
    return b.save(folder, gaussians=g, extra_meta={"edited_from": str(builtin_avatar_dir),
                                                    "edit": {"instruction": "make the face red"}})


def test_evaluate_wires_captions_renders_and_both_scores(builtin_avatar_dir, tmp_path, monkeypatch):
    """CLIP-S = mean over frames of cos(E(edit) - E(orig), T(edited caption) - T(original caption)),
    CLIP-C = mean of cos between consecutive frames' image directions, from each setting's renders of
    both avatars. Catches: swapped avatars or captions, a caption made up from the instruction,
    CLIP-C over the edited frames alone, renders of the wrong setting or avatar."""
    from edit3dgs.bundle import open_avatar

    edited = _reddened(builtin_avatar_dir, tmp_path / "edited")
    monkeypatch.setattr(ev, "ClipScorer", StubScorer)
    renders = []
    real_render = ev.render_setting

    def spy(bundle, setting, *args, **kwargs):
        out = real_render(bundle, setting, *args, **kwargs)
        renders.append((bundle.folder.resolve(), setting, args, out))
        return out

    monkeypatch.setattr(ev, "render_setting", spy)
    StubScorer.asked = []
    cap_o, cap_e = "a photo of a man", "a photo of a man with a red face"
    res = ev.evaluate(builtin_avatar_dir, edited, "make the face red", cap_o, cap_e, frames=3, scale=0.06)
    assert StubScorer.asked == [[cap_o, cap_e]]
    paths = ev.motion_paths(open_avatar(builtin_avatar_dir))
    t = StubScorer([], "cpu").texts([cap_o, cap_e]).double()
    d_txt = t[1] - t[0]
    for s in ev.SETTINGS:
        (fa,), (fb,) = ([r for r in renders if r[0] == f.resolve() and r[1] == s] for f in (builtin_avatar_dir, edited))
        assert fa[2] == fb[2] == (3, 0.06, paths.get(s)) and fa[3].shape[0] == 3
        ea, eb = (F.normalize(StubScorer.embed(r[3]), dim=-1) for r in (fa, fb))
        d = eb - ea
        cos = lambda x, y: float(x @ y / (x.norm() * y.norm()))  # noqa: E731
        assert res[s].frames == 3 and res[s].comparable
        assert res[s].clip_s == pytest.approx(sum(cos(di, d_txt) for di in d) / 3, abs=1e-4)
        assert res[s].clip_c == pytest.approx((cos(d[0], d[1]) + cos(d[1], d[2])) / 2, abs=1e-4)
    # No caption of the edited result: no CLIP-S (never one made up from the instruction); CLIP-C stays.
    StubScorer.asked = []
    res2 = ev.evaluate(builtin_avatar_dir, edited, "make the face red", cap_o, None, frames=3, scale=0.06,
                       settings=("novel_view",))
    assert res2["novel_view"].clip_s is None and StubScorer.asked == []
    assert res2["novel_view"].clip_c == pytest.approx(res["novel_view"].clip_c, abs=1e-6)
    # A template of the user's: the instruction fills {prompt}.
    ev.evaluate(builtin_avatar_dir, edited, "make the face red.", cap_o, "a photo of a man, {prompt}", frames=2,
                scale=0.06, settings=("novel_view",))
    assert StubScorer.asked == [[cap_o, "a photo of a man, make the face red"]]


def test_clip_images_are_resized_whole_with_bicubic_filtering(tmp_path):
    """As the seed's reference: the whole image resized to the CLIP input size, bicubic, CLIP's
    mean/std, no centre crop. Catches: the transformers processor's short-side resize + centre
    crop (it cuts off the sides of a portrait or a wide image), bilinear filtering."""
    from tiny_models import build_tiny_clip

    scorer = ev.ClipScorer(str(build_tiny_clip(tmp_path / "clip")), "cpu")
    S = scorer.image_size
    img = torch.ones(1, 24, 64, 3)
    img[:, :, :12] = torch.tensor([1.0, 0.0, 0.0])       # a red strip along the left edge
    img[:, 5:9, 30:40] = torch.tensor([0.1, 0.4, 0.9])
    px = scorer.pixel_values(img)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)   # OpenAI CLIP's
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    expect = (F.interpolate(img.permute(0, 3, 1, 2), size=(S, S), mode="bicubic", align_corners=False) - mean) / std
    assert px.shape == (1, 3, S, S)
    torch.testing.assert_close(px, expect, atol=1e-5, rtol=1e-5)
    rgb = px * std + mean
    assert (rgb[0, 0, :, :4] > 0.95).all() and (rgb[0, 1, :, :4] < 0.05).all()     # the strip is still there
    assert not scorer.comparable                                                     # a tiny CLIP, not ViT-L/14


def test_eval_command_on_the_builtin_avatar(builtin_avatar_dir, tmp_path, cli):
    from tiny_models import build_tiny_clip

    clip = build_tiny_clip(tmp_path / "clip")
    edited = _reddened(builtin_avatar_dir, tmp_path / "edited")
    code, out, err = cli("eval", "--edited", edited, "--clip", clip, "--frames", 2, "--scale", 0.08,
                         "--edited-caption", "a photo of a person with a red face",
                         "--device", "cpu", "--json", tmp_path / "clip.json")
    assert code == 0, err
    assert "GA-Editor (paper)" in out and "This edit (ours" in out and "not comparable" in out   # a tiny CLIP
    rec = json.loads((tmp_path / "clip.json").read_text())
    assert rec["caption_edited"] == "a photo of a person with a red face"
    for s in ("novel_view", "self_reenactment", "cross_identity"):
        r = rec["ours"][s]
        assert r is not None and -1 <= r["clip_s"] <= 1 and -1 <= r["clip_c"] <= 1 and r["frames"] == 2
    assert "edited 'a photo of a person with a red face'" in out
    code, out, err = cli("eval", "--edited", edited, "--clip", tmp_path / "no-clip", "--device", "cpu")
    assert code == 2 and "--clip" in err and len(err.strip().splitlines()) == 1
