#!/usr/bin/env python3
"""Build the installable Blender extension: ``python build.py`` -> ``dist/edit3dgs-<version>.zip``.

``python build.py wheels --out DIR`` makes a folder of wheels that "Set Up Backend" installs from with no
network (the add-on's "Wheels Folder"; ``--help`` for its options): edit3dgs_addon/wheels.py, which the
extension carries too (``python wheels.py --out DIR`` in the installed extension's folder).

Layout inside the zip (the extension's package root):
    blender_manifest.toml, __init__.py and the modules of edit3dgs_addon/,
    operators/ and panels/ (subpackages), backend/ (the backend's source and
    pyproject.toml, so "Set Up Backend" can install it), README.md and LICENSE when present.
Blender's own builder (``blender_ext.py build``, shipped in the bpy wheel) makes the zip and
``blender_ext.py validate`` checks it when the script can be found; otherwise the zip is
written with zipfile (and the build says so).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".pytest_cache")


def manifest_version() -> tuple[str, str]:
    text = (ROOT / "blender_manifest.toml").read_text()
    ident = re.search(r'^id\s*=\s*"([^"]+)"', text, re.M).group(1)
    version = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M).group(1)
    return ident, version


def stage(dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(ROOT / "edit3dgs_addon", dest, ignore=IGNORE)
    for sub in ("operators", "panels"):
        shutil.copytree(ROOT / sub, dest / sub, ignore=IGNORE)
    shutil.copy2(ROOT / "blender_manifest.toml", dest / "blender_manifest.toml")
    (dest / "backend").mkdir()
    shutil.copytree(ROOT / "backend" / "edit3dgs", dest / "backend" / "edit3dgs", ignore=IGNORE)
    shutil.copy2(ROOT / "backend" / "pyproject.toml", dest / "backend" / "pyproject.toml")
    for name in ("README.md", "LICENSE"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, dest / name)
    return dest


def find_blender_ext() -> tuple[str, Path] | None:
    """(python, blender_ext.py) from the bpy wheel in .venv-blender (or any site-packages on sys.path)."""
    cands = sorted(glob.glob(str(ROOT / ".venv-blender/lib/python3*/site-packages/bpy/*/scripts/addons_core/bl_pkg/cli/blender_ext.py")))
    if cands:
        py = ROOT / ".venv-blender/bin/python"
        return (str(py) if py.exists() else sys.executable), Path(cands[-1])
    for p in sys.path:
        hits = sorted(glob.glob(str(Path(p) / "bpy/*/scripts/addons_core/bl_pkg/cli/blender_ext.py")))
        if hits:
            return sys.executable, Path(hits[-1])
    return None


def zip_dir(src: Path, out: Path) -> None:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(src).as_posix())


def check_zip(out: Path) -> None:
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
    need = {"blender_manifest.toml", "__init__.py", "operators/__init__.py", "panels/__init__.py",
            "backend/pyproject.toml", "backend/edit3dgs/server.py", "installer.py", "wheels.py"}
    missing = sorted(need - names)
    if missing:
        sys.exit(f"build: {out}: expected {', '.join(missing)} in the zip, found none")


def wheels_main(argv) -> int:
    """``python build.py wheels ...``: edit3dgs_addon/wheels.py (shipped in the extension too) with its options."""
    spec = importlib.util.spec_from_file_location("edit3dgs_wheels", ROOT / "edit3dgs_addon" / "wheels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(argv, prog="build.py wheels")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["wheels"]:
        return wheels_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="python build.py wheels --help: the Wheels Folder's options")
    ap.add_argument("--out-dir", default=str(ROOT / "dist"))
    a = ap.parse_args(argv)
    ident, version = manifest_version()
    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{ident}-{version}.zip"
    src = stage(out_dir / "stage" / ident)
    if out.exists():
        out.unlink()
    tool = find_blender_ext()
    if tool is not None:
        py, script = tool
        subprocess.run([py, str(script), "build", "--source-dir", str(src), "--output-filepath", str(out)], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run([py, str(script), "validate", str(out)], check=True)
        how = f"built and validated with {script.name}"
    else:
        zip_dir(src, out)
        how = "built with zipfile (blender_ext.py not found: not validated by Blender's tool)"
    check_zip(out)
    shutil.rmtree(out_dir / "stage", ignore_errors=True)
    print(f"{out} ({out.stat().st_size / 1e3:.0f} kB): {how}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
