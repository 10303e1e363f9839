"""'Set Up Backend': a venv in the extension's user folder with the bundled backend installed (no bpy).

A list of commands run one after another as subprocesses whose output goes
to a log; ``poll()`` is called from a timer, so Blender never waits on pip.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

TORCH = "torch==2.13.0"
TORCH_CPU = TORCH  # CPU machines: the CPU build first, never the multi-GB CUDA stack
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu128"  # Windows' PyPI torch is CPU-only; Linux's pulls CUDA too


def torch_choice(system: str | None = None, gpu: bool | None = None) -> tuple[str, str | None]:
    """(label, index URL) of the PyTorch build for this machine: CUDA on Windows/Linux with an NVIDIA GPU,
    the CPU build elsewhere, PyPI's own on macOS (Apple GPUs through MPS)."""
    system = platform.system() if system is None else system
    gpu = has_nvidia() if gpu is None else gpu
    if system == "Darwin":
        return "install torch (macOS)", None
    if gpu:
        return "install torch (CUDA)", TORCH_CUDA_INDEX
    return "install torch (CPU)", TORCH_CPU_INDEX


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def has_nvidia() -> bool:
    return shutil.which("nvidia-smi") is not None


def stage_backend(source: Path, dest: Path) -> Path:
    """Copy the bundled backend (the extension folder may be read-only) and return the folder to pip install."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest / "backend", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    readme = source.parent / "README.md"
    (dest / "README.md").write_text(readme.read_text() if readme.is_file() else "Edit3DGS backend\n")
    return dest / "backend"


def setup_commands(base_python: str, venv: Path, backend_dir: Path, extras: str = "",
                   gpu: bool | None = None, wheels: str | Path | None = None,
                   system: str | None = None) -> list[tuple[str, list[str]]]:
    """[(label, argv)] to create the venv and install the backend into it.

    ``wheels``: a folder of wheels to install from with no network (pip ``--no-index --find-links``; it must
    hold torch, the backend's dependencies and setuptools: ``python build.py wheels --out DIR`` makes one; run
    the commands with ``StepRunner(..., wheels=True)`` so that the folder is the only source); else the package
    index and PyTorch's index for this machine's build. ``extras``: "diffusion" for the Instruct-Pix2Pix editor
    (diffusers, transformers)."""
    py = str(venv_python(venv))
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check"]
    cmds = [("create venv", [base_python, "-m", "venv", str(venv)])]
    label, index = torch_choice(system, gpu)
    if wheels:
        source = ["--no-index", "--find-links", str(wheels)]
        cmds.append((label.replace("install torch", "install torch from the wheels folder"),
                     pip + source + [torch_in_folder(wheels, cuda=index == TORCH_CUDA_INDEX, system=system)]))
    else:
        source = []
        cmds.append(("upgrade pip", pip + ["--upgrade", "pip"]))
        cmds.append((label, pip + [TORCH] + (["--index-url", index] if index else [])))
    target = f"{backend_dir}[{extras}]" if extras else str(backend_dir)
    cmds.append(("install backend" + (" with Instruct-Pix2Pix" if extras else ""), pip + source + [target]))
    cmds.append(("check backend", [py, "-m", "edit3dgs.cli", "--help"]))
    return cmds


def torch_in_folder(wheels: str | Path, cuda: bool, system: str | None = None, python: str | None = None) -> str:
    """The torch requirement for a Wheels Folder: ``TORCH``, pinned to one build when the folder holds several for
    this platform and Python (pip would take ``+cu128`` over ``+cpu`` whatever the machine): a CUDA build on a
    machine with an NVIDIA GPU, else the CPU one. Names that are no wheel's are left out."""
    from .wheels import _packaging

    parse = _packaging()[2]
    version = TORCH.split("==")[1]
    plat = {"Windows": "win", "Darwin": "macosx", "Linux": "linux"}.get(system or platform.system())
    py = python or f"cp{sys.version_info.major}{sys.version_info.minor}"
    builds = set()
    for p in Path(wheels).glob("torch-*.whl"):
        try:
            _, ver, _, tags = parse(p.name)
        except Exception:   # not a wheel's name
            continue
        if ver.public == version and any(t.interpreter == py and (plat is None or plat in t.platform) for t in tags):
            builds.add(ver.local or "")
    if len(builds) < 2:
        return TORCH
    cu = sorted(b for b in builds if b.startswith("cu"))
    pick = cu[-1] if cuda and cu else "cpu" if "cpu" in builds else "" if "" in builds else None
    return TORCH if not pick else f"torch=={version}+{pick}"


def step_env(wheels: bool = False) -> dict:
    """The environment of the setup's steps: never Blender's PYTHONPATH/PYTHONHOME. From a Wheels Folder pip
    also reads no configuration file and no PIP_* variable: a pip.conf's or PIP_FIND_LINKS's links would add to
    the folder (``--find-links`` adds to them, ``--no-index`` keeps them) and make a folder that lacks a package
    look complete; the online setup keeps them (an artist's mirror, proxy or certificate)."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    if wheels:
        for key in [k for k in env if k.upper().startswith("PIP_")]:
            del env[key]
        env["PIP_CONFIG_FILE"] = os.devnull
    return env


class StepRunner:
    """Runs [(label, argv)] in order; ``poll()`` -> (state, step index, label), state in running/done/failed.
    ``wheels``: the steps install from a Wheels Folder alone (see ``step_env``)."""

    def __init__(self, commands, log_path: Path, wheels: bool = False):
        self.commands = list(commands)
        self.wheels = bool(wheels)
        self._step_start = 0  # where the running step's output starts in the log
        self.log_path = Path(log_path)
        self.index = -1
        self.proc: subprocess.Popen | None = None
        self.state = "running"
        self.error = ""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self._next()

    @property
    def label(self) -> str:
        return self.commands[self.index][0] if 0 <= self.index < len(self.commands) else ""

    @property
    def factor(self) -> float:
        """How far it got: a full bar only when every step succeeded (a failure stays where it stopped)."""
        if self.state == "done":
            return 1.0
        return max(0, self.index) / max(1, len(self.commands))

    def _next(self) -> None:
        self.index += 1
        if self.index >= len(self.commands):
            self.state = "done"
            self._log.close()
            return
        label, argv = self.commands[self.index]
        self._log.write(f"\n--- {label}: {' '.join(argv)}\n".encode())
        self._log.flush()
        self._step_start = self._log.tell()
        try:
            self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=step_env(self.wheels))
        except OSError as exc:
            self._fail(f"{label}: {exc}")

    def _step_error(self) -> str:
        """pip's last 'ERROR:' line of the step that failed (what is missing, most often), for the status line."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._step_start)
                lines = fh.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        said = next((ln[len("ERROR:"):].strip() for ln in reversed(lines) if ln.startswith("ERROR:")), "")
        if self.wheels and said.startswith("No matching distribution found for"):
            said += " in the Wheels Folder"
        return said[:200]

    def _fail(self, msg: str, state: str = "failed") -> None:
        self.state, self.error = state, f"{msg} (log: {self.log_path})"
        if not self._log.closed:
            self._log.write(f"\n--- {state}: {msg}\n".encode())
            self._log.close()

    def poll(self):
        if self.state == "running" and self.proc is not None:
            code = self.proc.poll()
            if code is not None:
                if code != 0:
                    said = self._step_error()
                    self._fail(f"{self.label} failed (exit status {code})" + (f": {said}" if said else ""))
                else:
                    self._next()
        return self.state, self.index, self.label

    def cancel(self, timeout: float = 2.0) -> None:
        """Stop now: the running step is ended (terminate, then kill) and nothing after it runs."""
        if self.state != "running":
            return
        label = self.label
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._fail(f"cancelled during '{label}'", "cancelled")


def base_python() -> str:
    """Blender's own Python can make the venv (it ships venv and ensurepip)."""
    return sys.executable
