"""Set up the backend (a venv in the extension's user folder) and open the logs."""

from __future__ import annotations

import os
from pathlib import Path

import bpy
from bpy.props import EnumProperty

from .. import installer, runtime
from .common import deny


def _wheels_dir(context) -> str:
    p = runtime.prefs()
    return bpy.path.abspath(p.wheels_dir).rstrip("/\\") if p is not None and p.wheels_dir.strip() else ""


def _with_ip2p(context) -> bool:
    p = runtime.prefs()
    scene = getattr(context, "scene", None)
    chosen = scene is not None and getattr(scene, "edit3dgs", None) is not None and scene.edit3dgs.editor == "ip2p"
    return bool(p is not None and p.setup_ip2p) or chosen


class EDIT3DGS_OT_setup_backend(bpy.types.Operator):
    """Create a Python environment in the extension's user folder and install the bundled backend and the PyTorch
    build for this machine, from the package index or from a folder of wheels"""

    bl_idname = "edit3dgs.setup_backend"
    bl_label = "Set Up Backend"

    @classmethod
    def poll(cls, context):
        if runtime.state.setup is not None:
            return deny(cls, "The backend setup is already running")
        wheels = _wheels_dir(context)
        if wheels and not os.path.isdir(wheels):
            return deny(cls, f"The Wheels Folder {wheels} does not exist")
        if not wheels and not bpy.app.online_access:
            return deny(cls, "Setting up downloads PyTorch and the backend's packages: allow Online Access "
                             "in Preferences > System, or choose a Wheels Folder")
        return True

    def execute(self, context):
        if runtime.state.setup is not None:
            self.report({"WARNING"}, "The backend setup is already running")
            return {"CANCELLED"}
        wheels = _wheels_dir(context)
        if not wheels and not bpy.app.online_access:  # checked again: never go online without permission
            self.report({"ERROR"}, "Online Access is off: allow it in Preferences > System, or choose a Wheels Folder")
            return {"CANCELLED"}
        root = Path(__file__).resolve().parent.parent
        source = root / "backend"
        if not (source / "pyproject.toml").is_file():
            self.report({"ERROR"}, f"{source}: expected the bundled backend (pyproject.toml), found none")
            return {"CANCELLED"}
        user = runtime.user_dir()
        venv = user / "venv"
        staged = installer.stage_backend(source, user / "backend_src")
        extras = "diffusion" if _with_ip2p(context) else ""
        cmds = installer.setup_commands(installer.base_python(), venv, staged, extras=extras, wheels=wheels or None)
        runtime.state.setup = installer.StepRunner(cmds, user / "logs" / "setup.log", wheels=bool(wheels))
        runtime.state.setup_target = str(installer.venv_python(venv))
        runtime.ensure_timer()
        where = f"from the wheels in {wheels}" if wheels else "from the package index"
        self.report({"INFO"}, f"Setting up the backend in {venv} {where}"
                              f"{' with Instruct-Pix2Pix' if extras else ''} (log: {user / 'logs' / 'setup.log'})")
        return {"FINISHED"}


class EDIT3DGS_OT_cancel_setup(bpy.types.Operator):
    """Stop setting up the backend (the step that runs is ended; the backend in use stays as it was)"""

    bl_idname = "edit3dgs.cancel_setup"
    bl_label = "Cancel Setup"

    @classmethod
    def poll(cls, context):
        if runtime.state.setup is None:
            return deny(cls, "The backend setup is not running")
        return True

    def execute(self, context):
        runner = runtime.state.setup
        if runner is None:
            return {"CANCELLED"}
        runner.cancel()
        runtime.drain()  # hand the result to the preferences now
        self.report({"INFO"}, "Backend setup cancelled")
        return {"FINISHED"}


class EDIT3DGS_OT_open_log(bpy.types.Operator):
    """Open the backend's log in Blender's text editor"""

    bl_idname = "edit3dgs.open_log"
    bl_label = "Open Log"

    which: EnumProperty(name="Log", description="Which log to open",
                        items=[("backend", "Backend", "What the backend wrote (errors in full)"),
                               ("setup", "Setup", "What 'Set Up Backend' did")])

    @classmethod
    def poll(cls, context):
        return True  # always at hand; a missing log is reported when pressed

    def execute(self, context):
        path = runtime.log_path() if self.which == "backend" else runtime.user_dir() / "logs" / "setup.log"
        if not path.is_file():
            self.report({"WARNING"}, f"No log yet ({path})")
            return {"CANCELLED"}
        name = path.name
        text = bpy.data.texts.get(name)
        if text is None:
            text = bpy.data.texts.load(str(path))
        else:
            text.clear()
            text.write(path.read_text(errors="replace"))
        for win in getattr(context.window_manager, "windows", ()):
            for area in win.screen.areas:
                if area.type == "TEXT_EDITOR":
                    area.spaces.active.text = text
                    break
        self.report({"INFO"}, f"Log in text '{text.name}' ({path})")
        return {"FINISHED"}


CLASSES = (EDIT3DGS_OT_setup_backend, EDIT3DGS_OT_cancel_setup, EDIT3DGS_OT_open_log)
