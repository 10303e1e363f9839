"""A Wheels Folder: everything "Set Up Backend" installs with no network (no bpy; runs in any Python 3.10+ with pip).

    python build.py wheels --out DIR              (in the repository)
    python wheels.py --out DIR                    (in the installed extension's folder)

torch==2.13.0 for the target (CPU by default, from PyTorch's CPU index: PyPI's Linux torch is the CUDA build
with the multi-GB CUDA stack; ``--torch cuda`` the CUDA one; PyPI's on macOS), every dependency of the bundled
backend (``--diffusion`` adds the Instruct-Pix2Pix packages) and setuptools (it builds the backend, torch needs it),
for Blender's Python (``--python-version``, 3.11 for Blender 4.2-5.0) and this machine's platform or
``--platform`` (win_amd64, macosx_11_0_arm64, manylinux_2_28_x86_64). pip download evaluates environment
markers on the machine it runs on, so the folder is then walked with the target's markers and what is missing
is fetched (a folder made on Linux for Windows gets tqdm's colorama).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.parser import HeaderParser
from pathlib import Path

HERE = Path(__file__).resolve().parent
BLENDER_PYTHON = "3.11"  # Blender 4.2 LTS to 5.0 (Blender's Python Console prints it)


def _packaging():
    """packaging's Requirement, default_environment, parse_wheel_filename, canonicalize_name (pip carries a copy)."""
    try:
        from packaging.markers import default_environment
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name, parse_wheel_filename
    except ImportError:
        from pip._vendor.packaging.markers import default_environment
        from pip._vendor.packaging.requirements import Requirement
        from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename
    return Requirement, default_environment, parse_wheel_filename, canonicalize_name


def _toml(path: Path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        from pip._vendor import tomli as tomllib
    return tomllib.loads(path.read_text())


def _installer():
    """installer.py beside this file (no bpy): the torch pin and PyTorch's indexes Set Up Backend uses."""
    spec = importlib.util.spec_from_file_location("edit3dgs_installer", HERE / "installer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def target_environment(platform_tag: str | None, python_version: str) -> dict:
    """The environment markers of the machine the wheels are for (pip download evaluates markers on the machine
    it runs on, whatever --platform says: a folder made on Linux for Windows would lack tqdm's colorama)."""
    _, default_environment, _, _ = _packaging()
    env = dict(default_environment())
    env.update(python_version=python_version, python_full_version=f"{python_version}.0",
               implementation_name="cpython", platform_python_implementation="CPython")
    if not platform_tag:
        return env
    tag = platform_tag.lower()
    if tag.startswith("win"):
        machine = {"win_amd64": "AMD64", "win_arm64": "ARM64", "win32": "x86"}.get(tag, "AMD64")
        env.update(sys_platform="win32", platform_system="Windows", os_name="nt", platform_machine=machine)
    elif tag.startswith("macosx"):
        machine = "arm64" if tag.endswith(("arm64", "universal2")) else "x86_64"
        env.update(sys_platform="darwin", platform_system="Darwin", os_name="posix", platform_machine=machine)
    elif "linux" in tag:
        m = re.search(r"(x86_64|aarch64|i686|ppc64le|s390x|armv7l)$", tag)
        env.update(sys_platform="linux", platform_system="Linux", os_name="posix",
                   platform_machine=m.group(1) if m else env["platform_machine"])
    else:
        sys.exit(f"wheels: --platform {platform_tag}: expected a wheel platform tag such as win_amd64, "
                 f"macosx_11_0_arm64 or manylinux_2_28_x86_64, found none of win*, macosx*, *linux*")
    return env


def folder_requirements(folder: Path, roots: list[str], env: dict) -> tuple[list[str], list[Path]]:
    """Walk the roots' dependencies through the wheels in ``folder`` with the target's markers, as pip will:
    ([requirements no wheel there satisfies, each with what needs it], [the wheels used])."""
    Requirement, _, parse_wheel_filename, canonicalize_name = _packaging()
    have: dict[str, list] = {}
    for whl in folder.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(whl.name)
        have.setdefault(name, []).append((version, whl))
    todo = [(Requirement(r), "the backend", frozenset()) for r in roots]
    seen, used, missing = set(), [], []
    while todo:
        req, by, parent_extras = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e})
                                              for e in sorted(parent_extras) or [""]):
            continue
        name = canonicalize_name(req.name)
        fits = sorted((v, w) for v, w in have.get(name, []) if req.specifier.contains(v, prereleases=True))
        if not fits:
            missing.append(f"{req.name}{req.specifier} (needed by {by})")
            continue
        version, whl = fits[-1]
        key = (name, version, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        used.append(whl)
        with zipfile.ZipFile(whl) as z:
            meta = next(n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
            deps = HeaderParser().parsestr(z.read(meta).decode("utf-8", "replace")).get_all("Requires-Dist") or []
        todo.extend((Requirement(d), f"{req.name} {version}", frozenset(req.extras)) for d in deps)
    return sorted(set(missing)), sorted(set(used))


def _pip_download(args: list[str], what: str) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", *args]
    print("wheels: " + " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
        sys.exit(f"wheels: pip could not download {what} (its message is above): check the network and "
                 f"that the packages exist for this --platform and --python-version")


def wheels(out: Path, torch_build: str = "cpu", platform_tag: str | None = None,
           python_version: str = BLENDER_PYTHON, diffusion: bool = False) -> list[Path]:
    """Fill ``out`` with every wheel Set Up Backend installs from a Wheels Folder; returns those it will use."""
    inst = _installer()
    env = target_environment(platform_tag, python_version)
    system = env["platform_system"]
    if torch_build == "cuda" and system == "Darwin":
        sys.exit("wheels: --torch cuda: PyTorch has no CUDA build for macOS (leave --torch out there)")
    _, index = inst.torch_choice(system=system, gpu=torch_build == "cuda")
    tags = ["--only-binary=:all:", "--python-version", python_version]
    tags += ["--platform", platform_tag] if platform_tag else []
    out.mkdir(parents=True, exist_ok=True)
    # 1. torch alone from its own index (PyPI's Linux torch is the CUDA build and pulls the multi-GB CUDA stack)
    with tempfile.TemporaryDirectory(dir=out, prefix=".torch-") as tmp:
        _pip_download(["--no-deps", "-d", tmp, *tags, inst.TORCH] + (["--index-url", index] if index else []),
                      f"{inst.TORCH} from {index or 'the package index'}")
        got = sorted(Path(tmp).glob("torch-*.whl"))
        if len(got) != 1:
            sys.exit(f"wheels: expected one torch wheel from {index or 'the package index'}, found {len(got)}")
        torch_version = got[0].name.split("-")[1]
        local = torch_version.partition("+")[2]
        want = "" if system == "Darwin" else ("cu" if torch_build == "cuda" else "cpu")
        if want and not local.startswith(want):
            sys.exit(f"wheels: {got[0].name}: expected PyTorch's {torch_build.upper()} build (version "
                     f"{torch_version.partition('+')[0]}+{want}...), found {torch_version}: was {index} reachable?")
        shutil.move(str(got[0]), str(out / got[0].name))
    # 2. the rest from the package index, torch pinned to the wheel just saved
    project = _toml(backend_pyproject())
    roots = [f"torch=={torch_version}", *project["project"]["dependencies"],
             *(project["project"]["optional-dependencies"]["diffusion"] if diffusion else []),
             *project["build-system"]["requires"]]  # building the bundled backend: setuptools (>= 70.1 needs no wheel)
    # For another platform or Python pip's resolver would read the markers of this one (missing tqdm's colorama
    # for Windows, or asking for torch's Linux-only nvidia packages there): then each wheel alone, and the walk
    # below follows the dependencies with the target's markers.
    here = platform_tag is None and python_version == "%d.%d" % sys.version_info[:2]
    _pip_download(["-d", str(out), "--find-links", str(out), *tags, *roots] + ([] if here else ["--no-deps"]),
                  "the backend's dependencies")
    # 3. what is still missing for the target's markers, until nothing is
    for _ in range(30):
        missing, used = folder_requirements(out, roots, env)
        if not missing:
            break
        names = [m.split(" (needed by")[0] for m in missing]
        _pip_download(["--no-deps", "-d", str(out), *tags, *names], ", ".join(names))
    else:
        sys.exit(f"wheels: {out}: still missing {', '.join(missing)}")
    size = sum(w.stat().st_size for w in used) / 1e6
    print(f"{out}: {len(used)} wheels ({size:.0f} MB) with torch {torch_version} for Python {python_version}"
          f"{' on ' + platform_tag if platform_tag else ''}{' and Instruct-Pix2Pix' if diffusion else ''}. In Blender: "
          f"Preferences > Add-ons > Edit3DGS > Wheels Folder: {out.resolve()}, then Set Up Backend (no network needed)")
    return used


def backend_pyproject() -> Path:
    """The bundled backend's pyproject.toml: backend/ beside this file in the extension, ../backend in the repo."""
    for p in (HERE / "backend" / "pyproject.toml", HERE.parent / "backend" / "pyproject.toml"):
        if p.is_file():
            return p
    sys.exit(f"wheels: expected the backend's pyproject.toml in {HERE / 'backend'} or {HERE.parent / 'backend'}, "
             "found none")


def main(argv=None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="the folder to fill (made if missing; reused wheels are kept)")
    ap.add_argument("--torch", choices=("cpu", "cuda"), default="cpu",
                    help="PyTorch's CPU build (default) or its CUDA build (NVIDIA GPUs on Windows/Linux; ~3 GB more)")
    ap.add_argument("--platform", default=None,
                    help="the target's wheel platform tag when it is another machine: win_amd64, macosx_11_0_arm64, "
                        "manylinux_2_28_x86_64 (default: this machine's)")
    ap.add_argument("--python-version", default=BLENDER_PYTHON,
                    help=f"Blender's Python, major.minor (default {BLENDER_PYTHON}: Blender 4.2 to 5.0)")
    ap.add_argument("--diffusion", action="store_true",
                    help="also the Instruct-Pix2Pix editor's packages (Set Up Backend with Instruct-Pix2Pix Support)")
    a = ap.parse_args(argv)
    wheels(Path(a.out), a.torch, a.platform, a.python_version, a.diffusion)
    return 0


if __name__ == "__main__":
    sys.exit(main())
