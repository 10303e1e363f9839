"""`edit3dgs demo`: the bars of the issue on held-out views and outside the edited region, and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edit3dgs.demo import BARS, DemoConfig, run_demo

# The demo's own configuration, with fewer evaluation/animation frames to keep the test short.
QUICK = dict(editor="region", frames=12, eval_frames=6, orbit_frames=4, grid_frames=3)


def check_bars(m: dict) -> None:
    assert set(m["settings"]) == {"novel_view", "self_reenactment", "cross_identity"}
    assert BARS["psnr_inside_region_vs_ground_truth"] >= 30
    for key, r in m["settings"].items():
        assert float(r["psnr_vs_ground_truth"]) >= BARS["psnr_vs_ground_truth"], (key, r)
        assert float(r["psnr_outside_region"]) >= BARS["psnr_outside_region"], (key, r)
        # inside the edited region itself, where the edit is (held-out camera / sequence / cross-identity)
        assert float(r["psnr_inside_region_vs_ground_truth"]) >= BARS["psnr_inside_region_vs_ground_truth"], (key, r)
        assert 0.9 < float(r["ssim_inside_region_vs_ground_truth"]) <= 1, (key, r)
        # the edit is real: inside the region the original is far from the ground truth, the refit close to it
        assert float(r["psnr_inside_region_original_vs_ground_truth"]) < float(r["psnr_inside_region_vs_ground_truth"]) - 3, (key, r)
    assert m["passes"]
    # the edit record has the refit's fit inside the edit too, and the region editor's refit kept the geometry
    assert float(m["edit"]["edit_view_psnr_inside_edit"]) >= 30 and m["edit"]["appearance_only"]
    assert m["held_out_camera"] == 8 and 8 not in m["edit_set"]["cameras"]
    # novel-view timesteps are not edit timesteps
    assert not set(m["settings"]["novel_view"]["timesteps"]) & set(m["edit_set"]["timesteps"])


@pytest.mark.parametrize("prompt", ["give her red lips", "green eyes"])
def test_demo_bars(tmp_path, prompt):
    check_bars(run_demo(tmp_path / "demo", DemoConfig(prompt=prompt, **QUICK), log=lambda s: None))


def test_demo_defaults_are_the_papers_method_with_the_builtin_model():
    """`make demo` / `edit3dgs demo` with no options: the Instruct-Pix2Pix path with the shipped
    model, multi-view batch editing and inpainting on, the ablation only when asked for."""
    from edit3dgs.ablation import MAIN, VARIANTS
    from edit3dgs.cli import build_parser
    from edit3dgs.cli import demo as demo_cli

    ap = build_parser()
    cfg = demo_cli.config_from_args(ap.parse_args(["demo"]))
    assert (cfg.editor, cfg.model, cfg.ablation, cfg.prompt) == ("ip2p", "builtin", False, "make the hair blue")
    assert VARIANTS[MAIN] == {"multiview": True, "inpaint": True}      # the paper's method
    assert demo_cli.config_from_args(ap.parse_args(["demo", "--ablation", "--editor", "region"])).ablation


def test_demo_region_editor_make_the_hair_blue(tmp_path, cli):
    """`edit3dgs demo --editor region` (default prompt): bars, files, report."""
    from PIL import Image

    out = tmp_path / "demo"
    code, stdout, err = cli("demo", "--out", out, "--prompt", "make the hair blue", "--editor", "region")
    assert code == 0, err
    for stage in ("build avatar", "edit (render, edit, refit)", "evaluate", "figures", "total"):
        assert f"[demo] {stage}" in err
    assert (out / "avatar" / "sequences" / "held_out.npz").is_file()
    assert (out / "avatar" / "sequences" / "other_identity.npz").is_file()
    assert json.loads((out / "edited" / "edit.json").read_text())["input"] == str(out / "avatar")
    m = json.loads((out / "metrics.json").read_text())
    check_bars(m)
    html = (out / "report.html").read_text()
    for key in ("novel_view", "self_reenactment", "cross_identity"):
        assert (out / f"{key}_grid.png").is_file() and f'src="{key}.gif"' in html
        gif = Image.open(out / f"{key}.gif")
        assert gif.n_frames > 1
        assert f"{float(m['settings'][key]['psnr_vs_ground_truth']):.2f}" in html
        assert f"{float(m['settings'][key]['psnr_inside_region_vs_ground_truth']):.2f}" in html
        assert f"{float(m['settings'][key]['ssim_inside_region_vs_ground_truth']):.2f}" in html
    # the grid shows three rows: original, edited, ground truth, and the edited row is bluer
    g = np.asarray(Image.open(out / "novel_view_grid.png").convert("RGB")).astype(float)
    g = g[:, 90:]  # past the label column
    h = (g.shape[0] - 2) // 3
    rows = [g[2 + i * h: (i + 1) * h] for i in range(3)]
    blue = [float((r[..., 2] - r[..., 0]).mean()) for r in rows]
    assert blue[1] > blue[0] + 1 and abs(blue[1] - blue[2]) < abs(blue[0] - blue[2])
    # the existing output is kept without --overwrite
    code, _, err = cli("demo", "--out", out)
    assert code == 2 and "folder with files in it" in err
