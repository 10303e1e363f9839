"""Before/after figures of an edit: image grids (PNG), animations (GIF) and report.html."""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .images import to_uint8


def grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2, fill: int = 255) -> np.ndarray:
    """rows of (H,W,3) images (float [0,1] or uint8) -> one uint8 image, ``pad`` pixels apart."""
    rows = [[to_uint8(im) if im.dtype != np.uint8 else im for im in r] for r in rows]
    H = max(im.shape[0] for r in rows for im in r)
    W = max(im.shape[1] for r in rows for im in r)
    n = max(len(r) for r in rows)
    out = np.full((len(rows) * (H + pad) + pad, n * (W + pad) + pad, 3), fill, np.uint8)
    for i, r in enumerate(rows):
        for j, im in enumerate(r):
            y, x = pad + i * (H + pad), pad + j * (W + pad)
            out[y:y + im.shape[0], x:x + im.shape[1]] = im
    return out


def label_rows(img: np.ndarray, labels: Sequence[str], width: int = 90, pad: int = 2) -> np.ndarray:
    """Put a white column with one label per (equal-height) row on the left of a grid image."""
    from PIL import Image, ImageDraw, ImageFont  # maintained image library (text rendering)

    H = img.shape[0]
    col = Image.new("RGB", (width, H), (255, 255, 255))
    d = ImageDraw.Draw(col)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    h = (H - pad) / len(labels)
    for i, text in enumerate(labels):
        y = pad + i * h + h / 2
        d.text((6, y), text, fill=(40, 40, 40), font=font, anchor="lm")
    return np.concatenate([np.asarray(col), img], 1)


def save_image(path: os.PathLike | str, img: np.ndarray) -> None:
    from PIL import Image  # maintained image I/O

    Image.fromarray(img if img.dtype == np.uint8 else to_uint8(img)).save(str(path))


def save_animation(path: os.PathLike | str, frames: Sequence[np.ndarray], fps: float = 12.0) -> None:
    """GIF (or MP4 when ``path`` ends in .mp4 and an ffmpeg plugin is present), looping."""
    import imageio.v3 as iio  # maintained GIF/MP4 writer (Pillow plugin for GIF)

    frames = [f if f.dtype == np.uint8 else to_uint8(f) for f in frames]
    if str(path).endswith(".gif"):
        iio.imwrite(str(path), np.stack(frames), duration=int(1000 / fps), loop=0)
    else:
        iio.imwrite(str(path), np.stack(frames), fps=fps)


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _fmt(x, unit=""):
    if isinstance(x, (int, float)):
        return f"{x:.2f}{unit}"
    return html.escape(str(x))


def write_report(path: os.PathLike | str, metrics: dict, sections: list[dict]) -> None:
    """report.html: summary table, then per setting the grid and the animation side by side.

    ``sections``: dicts with title, key (into metrics["settings"]), grid, animation, caption.
    """
    m = metrics
    bars = m.get("bars", {})
    rows = []
    for sec in sections:
        s = m["settings"][sec["key"]]
        ok = lambda key: "ok" if _num(s.get(key)) >= bars.get(key, -math.inf) else "bad"  # noqa: E731
        rows.append(
            f"<tr><td>{html.escape(sec['title'])}</td><td>{s['frames']}</td>"
            f"<td class='{ok('psnr_vs_ground_truth')}'>{_fmt(s['psnr_vs_ground_truth'])}</td>"
            f"<td>{_fmt(s['ssim_vs_ground_truth'])}</td>"
            f"<td class='{ok('psnr_inside_region_vs_ground_truth')}'>{_fmt(s.get('psnr_inside_region_vs_ground_truth'))}</td>"
            f"<td>{_fmt(s.get('ssim_inside_region_vs_ground_truth'))}</td>"
            f"<td>{_fmt(s.get('psnr_inside_region_original_vs_ground_truth'))}</td>"
            f"<td class='{ok('psnr_outside_region')}'>{_fmt(s['psnr_outside_region'])}</td></tr>")
    timing_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v, ' s')}</td></tr>" for k, v in m.get("timings_s", {}).items())
    figs = []
    for sec in sections:
        s = m["settings"][sec["key"]]
        figs.append(f"""
<section>
 <h2>{html.escape(sec['title'])}</h2>
 <p class="cap">{html.escape(sec['caption'])} &mdash; PSNR vs ground truth <b>{_fmt(s['psnr_vs_ground_truth'])} dB</b>,
 SSIM {_fmt(s['ssim_vs_ground_truth'])}; inside the edited region <b>{_fmt(s.get('psnr_inside_region_vs_ground_truth'))} dB</b>,
 SSIM {_fmt(s.get('ssim_inside_region_vs_ground_truth'))}; outside it (original vs edited) <b>{_fmt(s['psnr_outside_region'])} dB</b></p>
 <div class="row">
  <figure><img src="{html.escape(sec['grid'])}" class="grid"><figcaption>rows: original &middot; edited (refit avatar) &middot; ground truth (Gaussians recoloured directly)</figcaption></figure>
  <figure><img src="{html.escape(sec['animation'])}" class="anim"><figcaption>original | edited</figcaption></figure>
 </div>
</section>""")
    abl = ablation_section(m)
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Edit3DGS demo: {html.escape(m['prompt'])}</title>
<style>
 body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1300px; }}
 h1 {{ font-size: 24px; margin-bottom: 4px; }} h2 {{ font-size: 19px; margin: 26px 0 6px; }}
 table {{ border-collapse: collapse; margin: 8px 0 16px; }}
 td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
 td:first-child, th:first-child {{ text-align: left; }}
 .ok {{ background: #e3f6e3; }} .bad {{ background: #fbe0e0; }}
 .row {{ display: flex; gap: 24px; align-items: flex-start; flex-wrap: wrap; }}
 figure {{ margin: 0; }} figcaption, .cap, .note {{ color: #555; font-size: 14px; }}
 img.grid, img.anim {{ image-rendering: auto; border: 1px solid #ddd; }}
 img.grid {{ width: 720px; }} img.anim {{ width: 380px; }}
 .flex {{ display: flex; gap: 40px; flex-wrap: wrap; }}
</style></head><body>
<h1>Edit3DGS demo: &ldquo;{html.escape(m['prompt'])}&rdquo;</h1>
<p class="note">Built-in avatar ({html.escape(str(m['avatar']['num_gaussians']))} Gaussians on the built-in head), edited with the
<b>{html.escape(m['editor'])}</b> editor on {len(m['edit_set']['cameras'])} cameras ({html.escape(', '.join(map(str, m['edit_set']['cameras'])))})
&times; {len(m['edit_set']['timesteps'])} timesteps ({html.escape(', '.join(map(str, m['edit_set']['timesteps'])))})
at {m['edit_set']['resolution'][0]}&times;{m['edit_set']['resolution'][1]} px, then refit ({m['edit']['iterations']} iterations).
Edited region(s): {html.escape(', '.join(m['regions']))}. Ground truth: the avatar with those regions' Gaussians recoloured directly
by the editor's colour map. Held-out camera {m['held_out_camera']} is never edited or fitted.</p>
<div class="flex">
<div><h2>Numbers</h2>
<table><tr><th rowspan="2">setting</th><th rowspan="2">frames</th><th colspan="2">whole image vs GT</th>
<th colspan="3">inside the edited region vs GT</th><th rowspan="2">PSNR outside region,<br>original vs edited (dB)</th></tr>
<tr><th>PSNR (dB)</th><th>SSIM</th><th>PSNR (dB)</th><th>SSIM</th><th>original's PSNR (dB)</th></tr>
{''.join(rows)}</table>
<p class="note">Bars: PSNR vs ground truth &ge; {_fmt(bars.get('psnr_vs_ground_truth', 0))} dB over whole images and
&ge; {_fmt(bars.get('psnr_inside_region_vs_ground_truth', 0))} dB inside the edited region (pixels with &ge; 2 % of their
opacity from it), outside the region &ge; {_fmt(bars.get('psnr_outside_region', 0))} dB.</p></div>
<div><h2>Time per stage</h2><table><tr><th>stage</th><th>time</th></tr>{timing_rows}</table></div>
</div>
{abl}
{''.join(figs)}
<p class="note">Files: avatar/ (input), edited/ (output avatar, edit.json), metrics.json.</p>
</body></html>
"""
    Path(path).write_text(doc)


def ablation_section(m: dict) -> str:
    """The paper's ablation (``metrics['ablation']``, from ``edit3dgs.ablation``) as a table with the
    seed's claims beside the measurements; empty when the demo ran without it."""
    a = m.get("ablation")
    if not a:
        return ""
    head = ("<tr><th rowspan='2'>variant</th><th colspan='3'>after refit: whole / inside region vs GT (dB)</th>"
            "<th colspan='4'>edited 2D images, before refit</th><th rowspan='2'>expression PSNR,<br>held-out sequence (dB)</th>"
            "<th rowspan='2'>edit / total (s)</th></tr><tr><th>novel view</th><th>held-out seq.</th><th>cross-identity</th>"
            "<th>vs GT (dB)</th><th>vs refit render (dB)</th><th>colour spread across views</th><th>expression PSNR (dB)</th></tr>")
    rows = []
    for v, r in a["variants"].items():
        st, ed = r["settings"], r["edited"]
        cell = lambda k: f"{_fmt(st[k]['psnr_vs_ground_truth'])} / {_fmt(st[k]['psnr_inside_region_vs_ground_truth'])}"  # noqa: E731
        rows.append(f"<tr><td>{html.escape(r['title'])}</td><td>{cell('novel_view')}</td><td>{cell('self_reenactment')}</td>"
                    f"<td>{cell('cross_identity')}</td><td>{_fmt(ed['psnr_edited_vs_ground_truth'])}</td>"
                    f"<td>{_fmt(ed['psnr_edited_vs_refit_render'])}</td>"
                    f"<td>{_fmt(100 * float(ed['colour_spread_across_views']))} % "
                    f"(GT {_fmt(100 * float(ed['colour_spread_across_views_ground_truth']))} %)</td>"
                    f"<td>{_fmt(ed['psnr_expression_edited_vs_ground_truth'])}</td>"
                    f"<td>{_fmt(st['self_reenactment']['psnr_expression_vs_ground_truth'])}</td>"
                    f"<td>{_fmt(r['timings_s'].get('edit'))} / {_fmt(r['seconds'])}</td></tr>")
    label = {"agrees": "agrees", "none": "no measurable effect", "disagrees": "does not agree"}
    claims = "".join(f"<li><b>{label.get(c.get('verdict'), 'agrees' if c['agrees'] else 'does not agree')}</b>: "
                     f"{html.escape(c['claim'])}. "
                     f"Measured: {html.escape(c['finding'])}.</li>" for c in a.get("summary", {}).values())
    if len(a["variants"]) == 1:
        title, ways = "The paper's method, measured", ("Only the paper's method ran; <code>edit3dgs demo --ablation</code> "
                                                       "(<code>make demo ABLATION=1</code>) adds the other three variants and "
                                                       "the seed's claims beside them.")
    else:
        title, ways = "The paper's ablation, against ground truth", (
            f"The same edit set edited {len(a['variants'])} ways by the Instruct-Pix2Pix editor, each refit the same way.")
    claims_html = (f'<p class="note">The seed\'s claims beside the measurements:</p><ul class="note">{claims}</ul>'
                   if claims else "")
    return f"""<h2>{title}</h2>
<p class="note">{ways} Colour spread:
per timestep, the standard deviation across the views of the edited region's mean colour, relative to that mean
(the ground truth's own spread, from shading, beside it). Expression PSNR: inside the eye and mouth masks.</p>
<table>{head}{''.join(rows)}</table>
{claims_html}"""


def load_metrics(path: os.PathLike | str) -> dict:
    return json.loads(Path(path).read_text())
