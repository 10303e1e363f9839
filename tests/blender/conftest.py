"""Blender-side tests: bpy 5.0.1 headless (.venv-blender), the backend in its own venv, a real subprocess.

Blender's user folders point at a temporary directory *before* bpy is imported,
so the real user's Blender (preferences, extensions) is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_USER = tempfile.mkdtemp(prefix="edit3dgs-blender-user-")
_VERSIONS = tempfile.mkdtemp(prefix="edit3dgs-versions-")  # where the tests' unsaved scenes keep their edits
os.environ["BLENDER_USER_RESOURCES"] = _USER  # config, scripts, extensions: all under here
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(REPO))  # the bpy-free modules of edit3dgs_addon, imported directly

import bpy  # noqa: E402  (after the environment is set)

EXT_MODULE = "bl_ext.user_default.edit3dgs"
EDIT_SETTINGS = dict(editor="region", rounds=1, iters_per_batch=3, scale=0.1,
                     num_timesteps=1, local_regions={"hair"}, use_all_cameras=False)
EDIT_CAMERAS = ("cam00", "cam12")  # a side and a back view see the hair


def backend_python() -> str:
    return os.environ.get("EDIT3DGS_BACKEND_PYTHON") or str(REPO / ".venv" / "bin" / "python")


def pytest_sessionfinish(session, exitstatus):
    mod = sys.modules.get(EXT_MODULE)
    if mod is not None:
        try:
            mod.runtime.shutdown()
        except Exception:
            pass
    shutil.rmtree(_USER, ignore_errors=True)
    shutil.rmtree(_VERSIONS, ignore_errors=True)


@pytest.fixture(scope="session")
def backend_py() -> str:
    py = backend_python()
    if not Path(py).is_file():
        pytest.skip(f"no backend interpreter at {py} (run `make setup`)")
    os.environ["EDIT3DGS_BACKEND_PYTHON"] = py
    return py


@pytest.fixture(scope="session")
def zip_path(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    res = subprocess.run([sys.executable, str(REPO / "build.py"), "--out-dir", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    zips = list(out.glob("edit3dgs-*.zip"))
    assert len(zips) == 1
    return zips[0]


@pytest.fixture(scope="session")
def avatar_dir(tmp_path_factory, backend_py) -> Path:
    out = tmp_path_factory.mktemp("avatar") / "ada"
    res = subprocess.run([backend_py, "-m", "edit3dgs.cli", "make-avatar", "--out", str(out), "--frames", "8",
                          "--gaussians-per-face", "2"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="session")
def ext(zip_path, backend_py):
    """The installed, enabled extension's package module."""
    res = bpy.ops.extensions.package_install_files(repo="user_default", filepath=str(zip_path), enable_on_install=True)
    assert res == {"FINISHED"}
    mod = sys.modules[EXT_MODULE]
    return mod


@pytest.fixture()
def scene(ext):
    """An empty scene for each test (the extension stays installed and its backend warm)."""
    bpy.ops.wm.read_homefile(use_empty=True)
    if EXT_MODULE not in bpy.context.preferences.addons:
        bpy.ops.preferences.addon_enable(module=EXT_MODULE)
    return bpy.context.scene


@pytest.fixture(scope="session")
def imported_once(ext):
    return {}


def pump(ext, until, timeout: float, step: float = 0.05) -> float:
    """Drive the add-on's timer function like Blender's event loop would; returns the longest drain (s)."""
    runtime = sys.modules[EXT_MODULE + ".runtime"]
    end = time.monotonic() + timeout
    longest = 0.0
    while time.monotonic() < end:
        t = time.perf_counter()
        runtime.drain()
        longest = max(longest, time.perf_counter() - t)
        if until():
            return longest
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s; report: {bpy.context.scene.edit3dgs.report!r}")


def runtime_mod():
    return sys.modules[EXT_MODULE + ".runtime"]


def import_avatar(folder) -> dict:
    before = set(bpy.data.objects)
    assert bpy.ops.edit3dgs.import_avatar(directory=str(folder)) == {"FINISHED"}
    new = [o for o in bpy.data.objects if o not in before]
    return {o["edit3dgs_role"]: o for o in new if "edit3dgs_role" in o} | {"all": new}


def select_cameras(names=EDIT_CAMERAS):
    for o in bpy.context.view_layer.objects:
        o.select_set(any(o.name.endswith(n) for n in names))


def configure_edit(**over):
    s = bpy.context.scene.edit3dgs
    s.versions_dir = _VERSIONS  # the scene is not saved: an edit needs a folder for its version
    for k, v in {**EDIT_SETTINGS, **over}.items():
        setattr(s, k, v)
    select_cameras()


def world_positions(avatar: str, params: dict, tmp: Path):
    """The backend's world positions for FLAME parameters (a protocol job on the same backend)."""
    import numpy as np

    out = tmp / f"world_{time.time_ns()}.npy"
    rt = runtime_mod()
    job = rt.submit("world_positions", {"avatar": str(avatar), "params": params, "out": str(out)})
    rt.backend().wait(job, 120)
    assert job.state == "done", job.error
    return np.load(out)
