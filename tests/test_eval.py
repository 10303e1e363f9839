"""CLIP-S / CLIP-C (formats.md §6) and the `edit3dgs eval` command."""

from __future__ import annotations

import json

import pytest
import torch

from edit3dgs.eval import clip_consistency, clip_directional_similarity, format_table, PAPER_ROWS, SettingResult


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
    assert len(table.splitlines()) == 2 + len(PAPER_ROWS) + 1


def test_eval_command_on_the_builtin_avatar(builtin_avatar_dir, tmp_path, cli):
    from edit3dgs.bundle import open_avatar
    from tiny_models import build_tiny_clip

    clip = build_tiny_clip(tmp_path / "clip")
    b = open_avatar(builtin_avatar_dir)
    g = b.gaussians.clone()
    g.features_dc[..., 0] += 0.8            # a reddened copy stands in for an edit
    edited = b.save(tmp_path / "edited", gaussians=g, extra_meta={"edited_from": str(builtin_avatar_dir),
                                                                   "edit": {"instruction": "make the face red"}})
    code, out, err = cli("eval", "--edited", edited, "--clip", clip, "--frames", 2, "--scale", 0.08,
                         "--device", "cpu", "--json", tmp_path / "clip.json")
    assert code == 0, err
    assert "GA-Editor (paper)" in out and "This edit (ours)" in out
    rec = json.loads((tmp_path / "clip.json").read_text())
    for s in ("novel_view", "self_reenactment", "cross_identity"):
        r = rec["ours"][s]
        assert r is not None and -1 <= r["clip_s"] <= 1 and -1 <= r["clip_c"] <= 1 and r["frames"] == 2
    code, out, err = cli("eval", "--edited", edited, "--clip", tmp_path / "no-clip", "--device", "cpu")
    assert code == 2 and "--clip" in err and len(err.strip().splitlines()) == 1
