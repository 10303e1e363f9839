"""'Set Up Backend' through the real operator with a fake Python whose pip fails, hangs or succeeds (no network):
a wheels folder installs with no index; a failure shows as failed (not a full bar) and changes nothing; Cancel
ends the running step within 2 s; the diffusion extras only for the Instruct-Pix2Pix editor; no network without
Online Access. And once for real: ``python build.py wheels`` makes the folder (the real CPU torch, every
dependency of the backend, setuptools), the real operator installs the extension's bundled backend from it into
a fresh venv with no index and no network, and that backend imports an avatar and edits it through the bridge."""

from __future__ import annotations

import os
import shlex
import sys
import time

import bpy
import pytest

from conftest import EXT_MODULE, REPO, configure_edit, import_avatar, pump

FAKE_PYTHON = """#!/bin/sh
# a base Python: '-m venv DIR' makes DIR/bin/python, a Python whose pip does what $FAKE_PIP says
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin"
  cat > "$3/bin/python" <<'EOF'
#!/bin/sh
echo "$*" >> "$FAKE_PIP_LOG"
case "$*" in
  *"pip install"*torch==*)
    case "$FAKE_PIP" in
      fail) echo "ERROR: No matching distribution found for torch"; exit 1 ;;
      hang) exec sleep 60 ;;
    esac ;;
esac
exit 0
EOF
  chmod +x "$3/bin/python"
  exit 0
fi
exit 2
"""


@pytest.fixture()
def fake(ext, tmp_path, monkeypatch):
    py = tmp_path / "fakepython"
    py.write_text(FAKE_PYTHON)
    py.chmod(0o755)
    log = tmp_path / "pip_calls.txt"
    monkeypatch.setenv("FAKE_PIP_LOG", str(log))
    monkeypatch.setattr(sys.modules[EXT_MODULE + ".installer"], "base_python", lambda: str(py))
    prefs = bpy.context.preferences.addons[EXT_MODULE].preferences
    before = prefs.backend_python
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    prefs.wheels_dir = str(wheels)
    rt = sys.modules[EXT_MODULE + ".runtime"]
    yield {"log": log, "wheels": wheels, "prefs": prefs, "rt": rt, "before": before}
    if rt.state.setup is not None:
        rt.state.setup.cancel()
        rt.state.setup = None
    rt.state.last_setup = None
    prefs.wheels_dir, prefs.setup_ip2p, prefs.backend_python = "", False, before


def run_setup(rt, timeout=60):
    assert bpy.ops.edit3dgs.setup_backend() == {"FINISHED"}
    end = time.monotonic() + timeout
    while rt.state.setup is not None and time.monotonic() < end:
        rt.drain()
        time.sleep(0.05)
    assert rt.state.setup is None, "the setup did not finish"
    return rt.state.last_setup


def pip_installs(log):
    return [shlex.split(line) for line in log.read_text().splitlines() if "pip install" in line]


def test_failed_setup_from_a_wheels_folder_shows_failed(scene, fake, monkeypatch):
    prefs_mod = sys.modules[EXT_MODULE + ".prefs"]
    monkeypatch.setenv("FAKE_PIP", "fail")
    assert not bpy.app.online_access  # a wheels folder needs no network
    runner = run_setup(fake["rt"])
    assert runner.state == "failed" and runner.factor < 1.0, (runner.state, runner.factor)
    text, icon = prefs_mod.setup_status(runner)
    assert text.startswith("Setup failed at step 2/4: install torch") and "exit status 1" in text, text
    assert "No matching distribution found for torch in the Wheels Folder" in text, text  # pip's own words
    assert icon == "ERROR"
    assert fake["prefs"].backend_python == fake["before"], "a failed setup changed the backend in use"
    # the preferences show it failed, not a full bar, with Set Up Backend ready again
    from test_panel_draw import Layout

    log = []
    prefs = fake["prefs"]
    proxy = type("P", (), {"layout": Layout(log), "__getattr__": lambda self, name: getattr(prefs, name)})()
    type(prefs).draw(proxy, bpy.context)
    assert not any(k == "progress" for k, _ in log), log
    assert ("label", text) in log and ("operator", "edit3dgs.setup_backend") in log
    installs = pip_installs(fake["log"])
    assert installs, "pip never ran"
    for argv in installs:
        assert "--no-index" in argv and argv[argv.index("--find-links") + 1] == str(fake["wheels"]), argv
        assert "--index-url" not in argv


def test_cancel_ends_the_running_step(scene, fake, monkeypatch):
    monkeypatch.setenv("FAKE_PIP", "hang")
    rt = fake["rt"]
    assert bpy.ops.edit3dgs.setup_backend() == {"FINISHED"}
    end = time.monotonic() + 30
    while not (fake["log"].is_file() and "torch" in fake["log"].read_text()) and time.monotonic() < end:
        rt.drain()
        time.sleep(0.05)
    runner = rt.state.setup
    assert runner is not None and runner.state == "running" and "torch" in runner.label
    proc = runner.proc
    t0 = time.monotonic()
    assert bpy.ops.edit3dgs.cancel_setup() == {"FINISHED"}
    took = time.monotonic() - t0
    assert took < 2.0, took
    assert proc.poll() is not None, "the pip step still runs"
    assert rt.state.setup is None and rt.state.last_setup.state == "cancelled"
    assert rt.state.last_setup.factor < 1.0
    assert fake["prefs"].backend_python == fake["before"]
    assert not bpy.ops.edit3dgs.cancel_setup.poll()


def test_diffusion_extras_only_for_instruct_pix2pix(scene, fake, monkeypatch):
    monkeypatch.setenv("FAKE_PIP", "ok")
    rt = fake["rt"]
    runner = run_setup(rt)
    assert runner.state == "done" and runner.factor == 1.0
    assert fake["prefs"].backend_python.endswith(os.path.join("venv", "bin", "python"))
    assert not any("[diffusion]" in a for argv in pip_installs(fake["log"]) for a in argv)
    fake["log"].unlink()
    scene.edit3dgs.editor = "ip2p"
    run_setup(rt)
    backend = pip_installs(fake["log"])[-1][-1]
    assert backend.endswith("[diffusion]"), backend


def test_no_network_without_online_access(scene, fake):
    fake["prefs"].wheels_dir = ""
    assert not bpy.app.online_access
    with pytest.raises(RuntimeError, match="allow Online Access in Preferences > System, or choose a Wheels Folder"):
        bpy.ops.edit3dgs.setup_backend()
    fake["prefs"].wheels_dir = str(fake["wheels"] / "missing")
    with pytest.raises(RuntimeError, match="does not exist"):
        bpy.ops.edit3dgs.setup_backend()


def _wheel(folder, name, version, files: dict, requires=()) -> None:
    """A pure-Python wheel written by hand (what `pip wheel` would make), so no network and no build tools."""
    import zipfile

    info = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {**files, f"{info}/METADATA": meta,
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: edit3dgs-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{p},,\n" for p in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        for p, text in files.items():
            z.writestr(p, text)
        z.writestr(f"{info}/RECORD", record)


IN_TREE_BUILD = '''
import os, sys, zipfile
sys.path.insert(0, os.path.dirname(__file__))
def get_requires_for_build_wheel(config_settings=None):
    return []
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    from wheelmaker import make
    return make(wheel_directory)
'''


def decoy_pip_sources(folder, monkeypatch) -> None:
    """What an artist's pip may be set up with: links holding a torch that would win (a higher version), an
    index and a proxy that answer nothing. Set Up Backend from a Wheels Folder must use none of them."""
    folder.mkdir()
    _wheel(folder, "torch", "2.13.0+decoy", {"torch/__init__.py": "raise ImportError('the decoy torch')\n"})
    nowhere = "http://127.0.0.1:9"  # the discard port: nothing answers
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    monkeypatch.setenv("PIP_INDEX_URL", nowhere + "/simple/")
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(key, nowhere)


def test_real_pip_installs_from_a_wheels_folder_with_no_index(tmp_path, monkeypatch):
    """The commands Set Up Backend runs, with the real venv and pip, from a folder of wheels: torch and the
    backend's dependencies come from the folder, the backend is built from its source, nothing from an index
    or from the links pip is configured with."""
    import inspect

    from edit3dgs_addon import installer
    decoy_pip_sources(tmp_path / "decoy", monkeypatch)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "torch", installer.TORCH.split("==")[1], {"torch/__init__.py": "FAKE = True\n"})
    _wheel(wheels, "tinydep", "1.0", {"tinydep/__init__.py": ""})
    backend = tmp_path / "backend"
    backend.mkdir()
    (backend / "pyproject.toml").write_text('[build-system]\nrequires = []\nbuild-backend = "inbuild"\n'
                                            'backend-path = ["."]\n')
    (backend / "inbuild.py").write_text(IN_TREE_BUILD)
    (backend / "wheelmaker.py").write_text(
        "import pathlib, zipfile\n" + inspect.getsource(_wheel).replace("_wheel", "wheel") +
        "def make(d):\n    wheel(pathlib.Path(d), 'edit3dgs', '0.1.0', {'edit3dgs/__init__.py': '', "
        "'edit3dgs/cli.py': 'print(\"usage: edit3dgs\")\\n'}, requires=('torch>=2.1', 'tinydep'))\n"
        "    return 'edit3dgs-0.1.0-py3-none-any.whl'\n")
    venv = tmp_path / "venv"
    cmds = installer.setup_commands(sys.executable, venv, backend, wheels=wheels, gpu=False, system="Linux")
    runner = installer.StepRunner(cmds, tmp_path / "setup.log", wheels=True)
    end = time.monotonic() + 240
    while runner.poll()[0] == "running" and time.monotonic() < end:
        time.sleep(0.1)
    log = (tmp_path / "setup.log").read_text()
    assert runner.state == "done", runner.error + "\n" + log[-3000:]
    assert_from_the_folder_alone(log, wheels, tmp_path)
    py = str(installer.venv_python(venv))
    import subprocess

    check = subprocess.run([py, "-c", "import torch, tinydep, edit3dgs; print(torch.FAKE)"], capture_output=True,
                           text=True)
    assert check.returncode == 0 and check.stdout.strip() == "True", check.stderr


def test_a_wheels_folder_with_two_torch_builds_installs_the_machines(tmp_path):
    """A folder made for both CPU and CUDA machines: pip alone would take +cu128 over +cpu on any machine;
    Set Up Backend pins the build the machine needs."""
    from edit3dgs_addon import installer

    v = installer.TORCH.split("==")[1]
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for build in ("+cpu", "+cu128"):
        (tmp_path / f"torch-{v}{build}-{py}-{py}-manylinux_2_28_x86_64.whl").write_bytes(b"")
    (tmp_path / f"torch-{v}-{py}-none-macosx_11_0_arm64.whl").write_bytes(b"")      # another platform's
    (tmp_path / f"torch-{v}+cu126-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(b"")  # another Python's
    (tmp_path / f"torch-{v}.whl").write_bytes(b"")                                    # no wheel's name

    def torch_arg(gpu, system="Linux"):
        cmds = installer.setup_commands("python3", tmp_path / "venv", tmp_path / "backend", wheels=tmp_path,
                                        gpu=gpu, system=system)
        return next(argv[-1] for label, argv in cmds if "torch" in label)

    assert torch_arg(False) == f"torch=={v}+cpu" and torch_arg(True) == f"torch=={v}+cu128"
    assert torch_arg(False, "Darwin") == installer.TORCH   # one build for macOS: as it is
    (tmp_path / f"torch-{v}+cu128-{py}-{py}-manylinux_2_28_x86_64.whl").unlink()
    assert torch_arg(True) == installer.TORCH      # one build: as it is (the folder was made for this machine)


def test_wheels_folder_follows_the_targets_markers(tmp_path):
    """pip download evaluates markers on the machine it runs on: wheels.py walks the folder with the target's
    markers, so a folder for Windows gets tqdm's colorama even when made on Linux."""
    import subprocess

    from edit3dgs_addon import wheels as build

    _wheel(tmp_path, "tqdm", "4.70.1", {}, requires=('colorama; platform_system == "Windows"',
                                                     'ipywidgets>=6; extra == "notebook"'))
    _wheel(tmp_path, "torch", "2.13.0+cpu", {}, requires=("filelock",))
    _wheel(tmp_path, "filelock", "3.0", {})
    roots = ["torch==2.13.0+cpu", "tqdm>=4.60"]
    for tag, missing in ((None, []), ("manylinux_2_28_x86_64", []), ("macosx_11_0_arm64", []),
                         ("win_amd64", ["colorama (needed by tqdm 4.70.1)"])):
        got, used = build.folder_requirements(tmp_path, roots, build.target_environment(tag, "3.11"))
        assert got == missing, tag
        assert sorted(w.name.split("-")[0] for w in used) == ["filelock", "torch", "tqdm"], tag
    _wheel(tmp_path, "colorama", "0.4.6", {})
    assert build.folder_requirements(tmp_path, ["tqdm"], build.target_environment("win_amd64", "3.11"))[0] == []
    assert build.folder_requirements(tmp_path, ["torch>=2.14"], build.target_environment(None, "3.11"))[0] == \
        ["torch>=2.14 (needed by the backend)"]
    res = subprocess.run([sys.executable, str(REPO / "build.py"), "wheels", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "usage: build.py wheels" in res.stdout and "--platform" in res.stdout, res.stderr


def assert_from_the_folder_alone(log: str, wheels, *also) -> None:
    links = [line for line in log.splitlines() if line.startswith(("Looking in links", "Looking in indexes"))]
    assert links and set(links) == {f"Looking in links: {wheels}"}, links
    sources = [line.split()[1] for line in log.splitlines() if line.startswith("Processing ")]
    assert sources and all(src.startswith(tuple(map(str, (wheels, *also)))) for src in sources), sources


@pytest.fixture(scope="module")
def wheels_folder(ext, tmp_path_factory):
    """The folder an artist makes with the README's command, here the installed extension's copy of it (`python
    build.py wheels` runs the same file from the repository): pip download needs the package index and PyTorch's
    CPU index once, pip's cache makes later runs fast. Deleted afterwards (about 260 MB)."""
    import shutil
    import subprocess
    from pathlib import Path

    script = Path(ext.__file__).parent / "wheels.py"
    out = tmp_path_factory.mktemp("wheels") / "edit3dgs-wheels"
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, str(script), "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, (f"`python {script} --out {out}` failed (it downloads from the package index and "
                                 f"PyTorch's CPU index):\n{(res.stdout + res.stderr)[-4000:]}")
    print(f"wheels folder made in {time.monotonic() - t0:.1f} s: {res.stdout.splitlines()[-1]}")
    yield out
    shutil.rmtree(out.parent, ignore_errors=True)


def test_real_setup_from_a_wheels_folder_then_import_and_edit(scene, ext, wheels_folder, monkeypatch, tmp_path):
    """Set Up Backend for real from the folder build.py makes: Blender's Python makes the venv, the real CPU torch
    and every dependency come from the folder, the extension's bundled backend is built from its source with the
    folder's setuptools; pip may reach nothing else (its configuration and PIP_* are cleared; an index and a proxy
    that answer nothing are set). Then the add-on's backend runs on that venv: import the built-in avatar (made by
    the venv's own `edit3dgs` command) and a region edit, through the bridge."""
    import shutil
    import subprocess

    rt = sys.modules[EXT_MODULE + ".runtime"]
    installer = sys.modules[EXT_MODULE + ".installer"]
    prefs = bpy.context.preferences.addons[EXT_MODULE].preferences
    before = prefs.backend_python
    venv = rt.user_dir() / "venv"
    shutil.rmtree(venv, ignore_errors=True)  # the fake tests' venv
    (rt.user_dir() / "logs" / "setup.log").unlink(missing_ok=True)
    decoy_pip_sources(tmp_path / "decoy", monkeypatch)
    prefs.wheels_dir = str(wheels_folder)
    try:
        t0 = time.monotonic()
        runner = run_setup(rt, timeout=600)
        took = time.monotonic() - t0
        log = runner.log_path.read_text()
        assert runner.state == "done" and runner.factor == 1.0, f"{runner.error}\n\nThe setup's log:\n{log[-4000:]}"
        print(f"Set Up Backend from the wheels folder: {took:.1f} s")
        venv_py = installer.venv_python(venv)
        assert prefs.backend_python == str(venv_py)
        # from the folder and the bundled source only: no index, no configured links
        assert_from_the_folder_alone(log, wheels_folder, rt.user_dir())
        listed = subprocess.run([str(venv_py), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True)
        got = dict(line.split("==") for line in listed.stdout.split())
        assert got.get("torch", "").endswith("+cpu") and got.get("edit3dgs") == "0.1.0", got
        assert not [n for n in got if n.startswith("nvidia")] and "diffusers" not in got, got
        for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "PIP_INDEX_URL",
                    "PIP_FIND_LINKS"):
            monkeypatch.delenv(key)

        # the venv's own command makes the built-in avatar
        avatar = tmp_path / "ada"
        t1 = time.monotonic()
        res = subprocess.run([str(venv_py.parent / "edit3dgs"), "make-avatar", "--out", str(avatar), "--frames", "8",
                              "--gaussians-per-face", "2"], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        # the add-on's backend on the new venv (the environment's interpreter would win over the preference)
        monkeypatch.delenv("EDIT3DGS_BACKEND_PYTHON")
        b = rt.backend()
        assert b.python == str(venv_py)
        t2 = time.monotonic()
        objs = import_avatar(avatar)
        assert "preview" in objs
        t3 = time.monotonic()
        configure_edit(prompt="make the hair blue")
        assert bpy.ops.edit3dgs.run_edit() == {"FINISHED"}
        s = scene.edit3dgs
        pump(ext, lambda: not s.running, timeout=300)
        assert s.status == "DONE", s.report
        assert len(objs["preview"].edit3dgs.versions) == 2
        assert rt.state.backend.python == str(venv_py), "the edit ran on another backend"
        print(f"on the new venv: make-avatar {t2 - t1:.1f} s, import {t3 - t2:.1f} s, "
              f"edit {time.monotonic() - t3:.1f} s")
    finally:
        rt.shutdown()  # the next test starts the usual backend again
        prefs.wheels_dir, prefs.backend_python = "", before
        rt.state.last_setup = None
        shutil.rmtree(venv, ignore_errors=True)
