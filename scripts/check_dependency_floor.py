#!/usr/bin/env python3
"""Does the lowest ``transformers`` (and ``diffusers``) that backend/pyproject.toml allows load
the tiny Instruct-Pix2Pix model and edit with it?

Builds a throw-away venv layered over the project's venv (its torch, numpy, safetensors, ...
stay; only the Hugging Face packages are put back to their floors), builds the tiny model of
the tests with those versions, loads it through ``load_ip2p`` and runs a two-step edit:

    .venv/bin/python scripts/check_dependency_floor.py [--venv /tmp/edit3dgs-floor]

Prints the versions and "floor OK", or the failure (exit 1). Needs the package registry once.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What transformers/diffusers at their floors need beside them (older than the project venv's).
COMPANIONS = {"4.45": ["tokenizers>=0.20,<0.21", "huggingface_hub>=0.24,<1.0"]}

CHECK = r"""
import sys, tempfile, torch
from pathlib import Path
sys.path[:0] = [{backend!r}, {tests!r}]
import diffusers, transformers
from tiny_models import build_tiny_ip2p
from edit3dgs.edit.ip2p import IP2PSettings, edit_images, load_ip2p
d = build_tiny_ip2p(Path(tempfile.mkdtemp()) / "tiny", unet_channels=(8, 16), vae_channels=(8, 16), groups=4, heads=2)
m = load_ip2p(str(d), device="cpu", dtype="bf16")
assert next(m.text_encoder.parameters()).dtype == torch.bfloat16
m = load_ip2p(str(d), device="cpu")
out = edit_images(m, torch.rand(2, 32, 32, 3), "make it blue", IP2PSettings(steps=2, resolution=32, inpaint=False))
assert out.images.shape == (2, 32, 32, 3) and bool(torch.isfinite(out.images).all())
print(f"transformers {{transformers.__version__}}, diffusers {{diffusers.__version__}}: tiny model loaded and edited; floor OK")
"""


def floor(name: str) -> str:
    text = (ROOT / "backend" / "pyproject.toml").read_text()
    m = re.search(rf'"{name}>=([0-9.]+)"', text)
    if not m:
        sys.exit(f"backend/pyproject.toml: no '{name}>=' floor")
    return m.group(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", default="/tmp/edit3dgs-floor", type=Path)
    a = ap.parse_args()
    tf, df = floor("transformers"), floor("diffusers")
    py = a.venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(a.venv)], check=True)
    site = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                          capture_output=True, text=True).stdout.strip()
    # The project's venv behind the throw-away one: packages installed here come first.
    (Path(site) / "zz_project_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pins = [f"transformers=={tf}.*", f"diffusers=={df}.*"] + COMPANIONS.get(tf, [])
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", *pins], check=True)
    r = subprocess.run([str(py), "-c", CHECK.format(backend=str(ROOT / "backend"), tests=str(ROOT / "tests"))],
                       env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
