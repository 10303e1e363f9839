#!/usr/bin/env python3
"""Open `edit3dgs export` PLYs in real web Gaussian-splat viewers, headless, and check the head is upright.

    .venv/bin/python scripts/check_viewer_upright.py [--avatar DIR] [--out viewer_check_out]

What it does (about a minute on a CPU; not part of `make test`: it needs Chromium and npm):
1. exports one timestep of the avatar (default: a small built-in one) twice: with the default
   `--up` and with `--up -y`;
2. opens each PLY in GaussianSplats3D (@mkkellogg/gaussian-splats-3d) and Spark (@sparkjsdev/spark),
   the versions pinned in scripts/viewer_check/package.json (installed there with `npm ci` when
   missing), in headless Chromium (WebGL through SwiftShader, no GPU), with each viewer's default
   up axis and a camera 0.6 m in front of the file's +z side looking at the splats' centre, and
   takes a screenshot;
3. checks each screenshot twice:
   - hair above the head's centre: the centroid row of the dark-brown (hair) pixels against the
     centroid row of all head pixels (negative: hair above: upright);
   - which way the viewer's picture agrees with Edit3DGS's own rasterizer rendering the same file
     from the same camera with up +y: PSNR against that render and against it turned 180 degrees.
   The default export must be upright in every viewer and `--up -y` upside down (so the check can
   tell the two apart).
Writes the screenshots, our reference renders, sheet.png (all side by side) and results.json to
--out; exits 1 when a check fails.

The viewers and the browser driver are tools for this check only, never shipped
(GaussianSplats3D, Spark and three.js: MIT; puppeteer-core: Apache-2.0).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "scripts" / "viewer_check"
VIEWERS = {"gs3d": ("GaussianSplats3D", "@mkkellogg/gaussian-splats-3d"), "spark": ("Spark", "@sparkjsdev/spark")}
W, H, FOV = 400, 400, 50.0  # the screenshot, and both viewers' vertical field of view (GaussianSplats3D's fixed 50)
DISTANCE = 0.6  # metres in front of the splats' centre


def run(cmd, **kw):
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if res.returncode != 0:
        sys.exit(f"check_viewer_upright: {' '.join(map(str, cmd))} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    return res.stdout


def find_chromium(given: str | None) -> str:
    for c in ([given] if given else ["chromium", "chromium-browser", "google-chrome"]):
        p = shutil.which(c) if c else None
        if p:
            return p
    sys.exit("check_viewer_upright: no Chromium found (Debian: apt-get install -y chromium; or --chromium PATH)")


def ensure_tools() -> None:
    if not (TOOLS / "node_modules" / "puppeteer-core").is_dir():
        if not shutil.which("npm"):
            sys.exit("check_viewer_upright: npm is needed to install the viewers (scripts/viewer_check/package.json)")
        run(["npm", "ci", "--no-audit", "--no-fund"], cwd=TOOLS)


def versions() -> dict:
    out = {}
    for pkg in ("@mkkellogg/gaussian-splats-3d", "@sparkjsdev/spark", "three", "puppeteer-core"):
        meta = json.loads((TOOLS / "node_modules" / pkg / "package.json").read_text())
        out[pkg] = {"version": meta["version"], "license": meta.get("license")}
    return out


class Handler(http.server.SimpleHTTPRequestHandler):
    """Static files, cross-origin isolated (GaussianSplats3D's default shared-memory sort workers need it)."""

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, *args):
        pass


def read_ply_gaussians(path: Path):
    """The PLY as a viewer reads it (3DGS layout), as world Gaussians for our rasterizer."""
    import torch
    from plyfile import PlyData

    from edit3dgs.avatar import WorldGaussians

    v = PlyData.read(str(path))["vertex"]
    names = v.data.dtype.names
    col = lambda *ks: torch.from_numpy(np.stack([np.asarray(v[k], np.float32) for k in ks], 1))  # noqa: E731
    rest = sorted((n for n in names if n.startswith("f_rest_")), key=lambda n: int(n[7:]))
    K = 1 + len(rest) // 3
    sh = torch.cat([col("f_dc_0", "f_dc_1", "f_dc_2")[:, None], col(*rest).reshape(-1, 3, K - 1).transpose(1, 2)], 1)
    return WorldGaussians(col("x", "y", "z"), torch.nn.functional.normalize(col("rot_0", "rot_1", "rot_2", "rot_3"), dim=-1),
                          torch.exp(col("scale_0", "scale_1", "scale_2")),
                          torch.sigmoid(torch.from_numpy(np.asarray(v["opacity"], np.float32))), sh, int(round(math.sqrt(K))) - 1)


def reference(g, eye, target) -> np.ndarray:
    """Edit3DGS's rasterizer: the same file from the viewer's camera (three.js lookAt, up +y, vertical fov)."""
    import torch

    from edit3dgs.cameras import Camera, look_at
    from edit3dgs.render import rasterize

    f = (H / 2) / math.tan(math.radians(FOV) / 2)
    cam = Camera(0, W, H, f, f, W / 2, H / 2, look_at(eye, target))
    vm, K = torch.tensor(cam.viewmat[None], dtype=torch.float32), torch.tensor(cam.K[None], dtype=torch.float32)
    with torch.no_grad():
        return rasterize(g.means, g.quats, g.scales, g.opacities, g.sh, vm, K, W, H, sh_degree=g.sh_degree).rgb[0].clamp(0, 1).numpy()


def psnr(a, b) -> float:
    return 10 * math.log10(1.0 / max(float(np.mean((a - b) ** 2)), 1e-12))


def hair_offset(img: np.ndarray) -> float:
    """Centroid row of the hair (dark brown) minus that of the whole head, in pixels; negative: hair above."""
    lum = img @ np.array([0.299, 0.587, 0.114])
    head = img.max(-1) > 0.08  # the background is black
    hair = head & (lum < 0.33) & (img[..., 0] > img[..., 2] + 0.03)
    rows = np.arange(img.shape[0])[:, None] * np.ones(img.shape[1])
    if hair.sum() < 50:
        return float("nan")
    return float(rows[hair].mean() - rows[head].mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--avatar", help="avatar folder (default: a small built-in avatar made here)")
    ap.add_argument("--timestep", default="0")
    ap.add_argument("--out", default="viewer_check_out")
    ap.add_argument("--chromium", help="the browser (default: chromium on PATH)")
    ap.add_argument("--viewers", default="gs3d,spark")
    ap.add_argument("--settle-ms", type=int, default=6000, help="time the page waits after loading before the screenshot")
    a = ap.parse_args()
    sys.path.insert(0, str(REPO / "backend"))
    chromium = find_chromium(a.chromium)
    ensure_tools()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    edit3dgs = [sys.executable, "-m", "edit3dgs.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "backend") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with tempfile.TemporaryDirectory(prefix="edit3dgs-viewer-") as tmp:
        tmp = Path(tmp)
        avatar = Path(a.avatar) if a.avatar else tmp / "avatar"
        if not a.avatar:
            run(edit3dgs + ["make-avatar", "--out", avatar, "--frames", "2", "--gaussians-per-face", "2"], env=env)
        site = tmp / "site"
        site.mkdir()
        os.symlink(TOOLS / "node_modules", site / "node_modules")
        shutil.copy(TOOLS / "page.html", site / "page.html")
        said = {}
        for name, flags in (("default", []), ("up_-y", ["--up", "-y"])):
            said[name] = run(edit3dgs + ["export", "--avatar", avatar, "--timestep", a.timestep, "--out", site / f"{name}.ply", *flags],
                             env=env).strip()
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(site)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        results, sheet = [], []
        try:
            for name in ("default", "up_-y"):
                g = read_ply_gaussians(site / f"{name}.ply")
                centre = g.means.median(0).values.numpy().astype(float)
                eye = centre + [0.0, 0.0, DISTANCE]
                ref = reference(g, eye, centre)
                from PIL import Image

                Image.fromarray((ref * 255).round().astype(np.uint8)).save(out / f"{name}_edit3dgs_reference.png")
                row = [ref]
                for v in a.viewers.split(","):
                    png = out / f"{name}_{v}.png"
                    q = (f"viewer={v}&ply={name}.ply&pos={','.join(f'{x:.5f}' for x in eye)}"
                         f"&at={','.join(f'{x:.5f}' for x in centre)}&settle={a.settle_ms}")
                    shot = json.loads(run(["node", TOOLS / "shoot.mjs", chromium, f"http://127.0.0.1:{server.server_port}/page.html?{q}",
                                           png, W, H]).strip().splitlines()[-1])
                    img = np.asarray(Image.open(png).convert("RGB"), np.float32) / 255
                    row.append(img)
                    r = {"export": name, "viewer": VIEWERS[v][0], "package": VIEWERS[v][1], "camera_up": shot["info"]["up"],
                         "splats": shot["info"]["splats"], "hair_minus_head_rows_px": round(hair_offset(img), 1),
                         "psnr_vs_ours_up_y_db": round(psnr(img, ref), 2),
                         "psnr_vs_ours_turned_180_db": round(psnr(img, ref[::-1, ::-1]), 2),
                         "webgl": shot["gl"], "browser": shot["browser"]}
                    r["upright"] = bool(r["hair_minus_head_rows_px"] < -10 and r["psnr_vs_ours_up_y_db"] > r["psnr_vs_ours_turned_180_db"])
                    r["upside_down"] = bool(r["hair_minus_head_rows_px"] > 10 and r["psnr_vs_ours_up_y_db"] > r["psnr_vs_ours_turned_180_db"])
                    results.append(r)
                    print(f"{name:8s} {r['viewer']:17s} hair-head {r['hair_minus_head_rows_px']:+6.1f} px, "
                          f"PSNR vs ours {r['psnr_vs_ours_up_y_db']:5.2f} dB (turned 180: {r['psnr_vs_ours_turned_180_db']:5.2f}) -> "
                          f"{'upright' if r['upright'] else 'upside down' if r['upside_down'] else 'unclear'}")
                sheet.append(np.concatenate(row, 1))
        finally:
            server.shutdown()
    from PIL import Image

    Image.fromarray((np.concatenate(sheet, 0) * 255).round().astype(np.uint8)).save(out / "sheet.png")
    ok = all(r["upright"] for r in results if r["export"] == "default") and \
        all(r["upside_down"] for r in results if r["export"] == "up_-y")
    (out / "results.json").write_text(json.dumps({"ok": ok, "packages": versions(), "export_said": said, "results": results}, indent=1))
    print(("PASS" if ok else "FAIL") + f": the default export is upright in every viewer, --up -y upside down ({out / 'results.json'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
