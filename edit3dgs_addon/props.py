"""Blender properties: the panel's settings (Scene.edit3dgs) and each preview's edit history."""

from __future__ import annotations

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty,
                       StringProperty)

REGION_ITEMS = [(r, r.replace("_", " ").title(), "") for r in
                ("hair", "skin", "forehead", "nose", "eyes", "eye_region", "lips", "ears", "neck", "teeth")]


class Edit3DGSVersion(bpy.types.PropertyGroup):
    # name: shown in the list
    folder: StringProperty(name="Avatar folder", subtype="DIR_PATH")
    npz: StringProperty(name="Gaussians file", subtype="FILE_PATH")
    prompt: StringProperty(name="Prompt")
    editor: StringProperty(name="Editor")


class Edit3DGSObject(bpy.types.PropertyGroup):
    """On a Gaussian preview object: its versions (0 is the imported avatar)."""

    versions: CollectionProperty(type=Edit3DGSVersion)
    version_index: IntProperty(name="Version", default=0)
    applied: IntProperty(name="Applied version", default=0)
    compare_with: IntProperty(name="Compared version", default=-1)


class Edit3DGSSettings(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", default="make the hair blue", description="What to change, in a sentence")
    editor: EnumProperty(name="Editor", items=[
        ("region", "Region", "Recolours FLAME regions named in the prompt (no model weights)"),
        ("ip2p", "Instruct-Pix2Pix", "Multi-view Instruct-Pix2Pix with expression-preserving inpainting")])
    ip2p_model: EnumProperty(name="Model", default="custom", items=[
        ("custom", "From Preferences", "The model id or folder set in the add-on's preferences "
                                       "(empty: timbrooks/instruct-pix2pix)"),
        ("builtin", "Built-in Head", "The small Instruct-Pix2Pix trained on the built-in head (ships with Edit3DGS; "
                                     "it knows only that head)")],
        description="Which Instruct-Pix2Pix weights edit the renders")
    steps: IntProperty(name="Steps", default=20, min=1, max=200)
    guidance_text: FloatProperty(name="Text guidance", default=7.5, min=0.0, max=30.0)
    guidance_image: FloatProperty(name="Image guidance", default=1.5, min=0.0, max=10.0)
    temporal_keys: BoolProperty(name="Share key views across time", default=False,
                                description="One timestep's key views serve all timesteps, linked by the FLAME binding "
                                            "(off: key views per timestep, as the paper)")
    rounds: IntProperty(name="Rounds", default=1, min=1, max=20,
                        description="Render, edit and refit this many times (each round starts from the last)")
    # 0 = Auto: the backend decides for the device (edit3dgs.loop.DEVICE_DEFAULTS), as `edit3dgs edit` does
    iters_per_batch: IntProperty(name="Iterations", default=0, min=0, max=10000,
                                 description="Refit iterations per key frame (0: Auto, until the fit stops improving)")
    views_per_iter: IntProperty(name="Views per Iteration", default=0, min=0, max=1000,
                                description="Key views fitted in each refit iteration (0: Auto, all on a GPU, "
                                            "4 on the CPU); fewer is faster")
    scale: FloatProperty(name="Render Scale", default=0.0, min=0.0, max=1.0,
                         description="Resolution of the edit views relative to the cameras (0: Auto, full on a GPU, "
                                     "a quarter on the CPU)")
    seed: IntProperty(name="Seed", default=0, min=0, description="Random seed of the edit (same seed, same result)")
    # key views
    use_all_cameras: BoolProperty(name="All training cameras", default=True)
    timesteps: StringProperty(name="Timesteps", default="", description="e.g. '0,4,8' or '0-32:4'; empty: spread over the sequence")
    num_timesteps: IntProperty(name="Timesteps to Use", default=8, min=1, max=1000)
    use_frame_range: BoolProperty(name="Use frame range", default=False)
    frame_start: IntProperty(name="Start", default=0, min=0)
    frame_end: IntProperty(name="End", default=7, min=0)
    frame_step: IntProperty(name="Step", default=1, min=1)
    # masks
    preserve_eyes: BoolProperty(name="Eyes", default=True)
    preserve_mouth: BoolProperty(name="Mouth", default=True)
    mask_source: EnumProperty(name="Masks from", items=[
        ("FLAME", "FLAME regions", "Render the head model's eye and mouth regions"),
        ("DETECTOR", "Text (Grounding DINO + SAM 2)", "Detect and segment with a text query")])
    mask_text: StringProperty(name="Mask text", default="eyes, mouth")
    mask_dilation: IntProperty(name="Dilation", default=1, min=0, max=64)
    mask_strength: FloatProperty(name="Strength", default=1.0, min=0.0, max=1.0)
    local_regions: StringProperty(name="Edit only", default="", description="Comma-separated regions to refit (empty: all)")
    # job state (written by the timer on the main thread)
    status: StringProperty(name="Status", default="")
    stage: StringProperty(name="Stage", default="")
    progress: FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0)
    report: StringProperty(name="Report", default="")
    running: BoolProperty(name="Running", default=False)


CLASSES = (Edit3DGSVersion, Edit3DGSObject, Edit3DGSSettings)


def register():
    for c in CLASSES:
        bpy.utils.register_class(c)
    bpy.types.Scene.edit3dgs = PointerProperty(type=Edit3DGSSettings)
    bpy.types.Object.edit3dgs = PointerProperty(type=Edit3DGSObject)


def unregister():
    del bpy.types.Object.edit3dgs
    del bpy.types.Scene.edit3dgs
    for c in reversed(CLASSES):
        bpy.utils.unregister_class(c)
