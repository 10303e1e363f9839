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

TORCH_CPU = "torch==2.13.0"  # CPU machines: the CPU build first, never the multi-GB CUDA stack
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


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


def setup_commands(base_python: str, venv: Path, backend_dir: Path, extras: str = "diffusion",
                   gpu: bool | None = None) -> list[tuple[str, list[str]]]:
    """[(label, argv)] to create the venv and install the backend into it."""
    py = str(venv_python(venv))
    gpu = has_nvidia() if gpu is None else gpu
    cmds = [("create venv", [base_python, "-m", "venv", str(venv)]),
            ("upgrade pip", [py, "-m", "pip", "install", "--upgrade", "pip"])]
    if not gpu and platform.system() != "Darwin":
        cmds.append(("install torch (CPU)", [py, "-m", "pip", "install", TORCH_CPU, "--index-url", TORCH_CPU_INDEX]))
    target = f"{backend_dir}[{extras}]" if extras else str(backend_dir)
    cmds.append(("install backend", [py, "-m", "pip", "install", target]))
    cmds.append(("check backend", [py, "-m", "edit3dgs.cli", "--help"]))
    return cmds


class StepRunner:
    """Runs [(label, argv)] in order; ``poll()`` -> (state, step index, label), state in running/done/failed."""

    def __init__(self, commands, log_path: Path):
        self.commands = list(commands)
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
        return max(0, self.index) / max(1, len(self.commands)) if self.state == "running" else 1.0

    def _next(self) -> None:
        self.index += 1
        if self.index >= len(self.commands):
            self.state = "done"
            self._log.close()
            return
        label, argv = self.commands[self.index]
        self._log.write(f"\n--- {label}: {' '.join(argv)}\n".encode())
        self._log.flush()
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONHOME", None)
        try:
            self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        except OSError as exc:
            self._fail(f"{label}: {exc}")

    def _fail(self, msg: str) -> None:
        self.state, self.error = "failed", f"{msg} (log: {self.log_path})"
        self._log.close()

    def poll(self):
        if self.state == "running" and self.proc is not None:
            code = self.proc.poll()
            if code is not None:
                if code != 0:
                    self._fail(f"{self.label} failed (exit status {code})")
                else:
                    self._next()
        return self.state, self.index, self.label

    def cancel(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.state == "running":
            self._fail("cancelled")


def base_python() -> str:
    """Blender's own Python can make the venv (it ships venv and ensurepip)."""
    return sys.executable
