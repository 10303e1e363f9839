"""Add-on preferences: the backend interpreter, its setup, device, models, cache."""

from __future__ import annotations

import os

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from . import runtime


class Edit3DGSPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    backend_python: StringProperty(
        name="Backend Python", subtype="FILE_PATH",
        description="Interpreter with edit3dgs installed (EDIT3DGS_BACKEND_PYTHON overrides it)")
    wheels_dir: StringProperty(
        name="Wheels Folder", subtype="DIR_PATH", default="",
        description="Set Up Backend installs from this folder of wheels alone, with no network (torch, the "
                    "backend's packages and setuptools: made by 'python wheels.py --out FOLDER' in this extension's "
                    "folder on a machine online). Empty: the package index (online)")
    setup_ip2p: BoolProperty(
        name="Instruct-Pix2Pix Support", default=False,
        description="Set Up Backend also installs the diffusion packages the Instruct-Pix2Pix editor needs "
                    "(always when a scene's editor is Instruct-Pix2Pix)")
    device: EnumProperty(name="Device", description="Where the backend renders, edits and refits",
                         items=[("auto", "Auto", "CUDA, then MPS, then CPU"), ("cuda", "CUDA", "An NVIDIA GPU"),
                                ("mps", "Apple (MPS)", "An Apple GPU"), ("cpu", "CPU", "The processor (slow)")])
    cpu_threads: IntProperty(name="CPU Threads", default=0, min=0, max=256,
                             description="Threads the backend computes with on the CPU (0: Auto, the cores other "
                                         "programs leave free, measured before each job). Restarts the backend")
    compile_unet: BoolProperty(
        name="Compile Diffusion Model", default=False,
        description="Instruct-Pix2Pix on an NVIDIA GPU: compile its UNet and VAE with torch.compile (edits 1.4x "
                    "faster on an H200) after a compile of about 1.5-2 min at a new image size or views per call; the "
                    "backend keeps it between edits. Ignored without CUDA")
    editor_model: StringProperty(name="Editor Model", default="",
                                 description="Instruct-Pix2Pix model id or folder (empty: the backend's default)")
    detector_model: StringProperty(name="Grounding DINO", default="",
                                    description="Grounding DINO model id or folder (text masks; empty: the backend's default)")
    sam_model: StringProperty(name="SAM 2", default="",
                               description="SAM 2 model id or folder (text masks; empty: the backend's default)")
    cache_dir: StringProperty(name="Cache Folder", subtype="DIR_PATH", default="",
                              description="Work files of imports, mask previews and shots; a cache (empty: the "
                                          "extension's user folder). Edited avatars go to each scene's Versions Folder")
    hang_timeout: FloatProperty(name="Hang Timeout (s)", default=600.0, min=5.0,
                                description="End the backend when a job says nothing for this long")

    def draw(self, context):
        layout = self.layout
        col = layout.column()
        env = os.environ.get("EDIT3DGS_BACKEND_PYTHON")
        row = col.row()
        row.enabled = not env
        row.prop(self, "backend_python")
        if env:
            col.label(text=f"EDIT3DGS_BACKEND_PYTHON overrides it: {env}", icon="INFO")
        col.prop(self, "wheels_dir")
        col.prop(self, "setup_ip2p")
        row = col.row(align=True)
        if runtime.state.setup is not None:
            row.operator("edit3dgs.cancel_setup", icon="CANCEL")
        else:
            row.operator("edit3dgs.setup_backend", icon="CONSOLE")
        row.operator("edit3dgs.open_log", text="Setup Log", icon="TEXT").which = "setup"
        setup = runtime.state.setup or runtime.state.last_setup
        if setup is not None:
            text, icon = setup_status(setup)
            if setup.state == "running":
                col.progress(factor=setup.factor, text=text)
            else:
                col.label(text=text, icon=icon, translate=False)
        col.prop(self, "device")
        col.prop(self, "cpu_threads")
        col.prop(self, "compile_unet")
        box = col.box()
        box.label(text="Models")
        box.prop(self, "editor_model")
        box.prop(self, "detector_model")
        box.prop(self, "sam_model")
        col.prop(self, "cache_dir")
        col.prop(self, "hang_timeout")


def setup_status(runner) -> tuple[str, str]:
    """(text, icon) of a backend setup: running with its step, done, failed or cancelled with the reason."""
    n = len(runner.commands)
    if runner.state == "running":
        return f"Step {runner.index + 1}/{n}: {runner.label}", "NONE"
    if runner.state == "done":
        return "Backend installed", "CHECKMARK"
    if runner.state == "cancelled":
        return f"Setup cancelled at step {runner.index + 1}/{n} ({runner.label}); nothing changed", "CANCEL"
    return f"Setup failed at step {runner.index + 1}/{n}: {runner.error}", "ERROR"


def get(context=None) -> Edit3DGSPreferences:
    context = context or bpy.context
    return context.preferences.addons[__package__].preferences
