"""Blender properties: the panel's settings (Scene.edit3dgs) and each preview's edit history."""

from __future__ import annotations

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty,
                       StringProperty)

# Copied from edit3dgs.flame.REGION_NAMES (less "boundary"); tests/blender/test_settings_panel.py checks it
REGIONS = ("hair", "skin", "face", "forehead", "nose", "eyes", "eye_region", "lips", "ears", "neck", "teeth")
REGION_ITEMS = [(r, r.replace("_", " ").title(), f"Refit only the Gaussians bound to the {r.replace('_', ' ')}")
                for r in REGIONS]


class Edit3DGSVersion(bpy.types.PropertyGroup):
    # name: shown in the list
    folder: StringProperty(name="Avatar Folder", subtype="DIR_PATH",
                           description="The GaussianAvatars folder of this version")
    npz: StringProperty(name="Gaussians File", subtype="FILE_PATH",
                        description="The preview's Gaussians of this version (rig file)")
    prompt: StringProperty(name="Prompt", description="The sentence that made this version")
    editor: StringProperty(name="Editor", description="The editor that made this version")


class Edit3DGSObject(bpy.types.PropertyGroup):
    """On a Gaussian preview object: its versions (0 is the imported avatar)."""

    versions: CollectionProperty(type=Edit3DGSVersion, name="Versions",
                                 description="The avatar's versions: the imported one, then one per edit")
    version_index: IntProperty(name="Version", default=0, description="The version selected in the history")
    applied: IntProperty(name="Applied Version", default=0, description="The version the preview shows")
    compare_with: IntProperty(name="Compared Version", default=-1,
                              description="The version shown beside the preview (-1: none)")


class Edit3DGSSettings(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", default="make the hair blue", description="What to change, in a sentence")
    editor: EnumProperty(name="Editor", description="What edits the renders", items=[
        ("region", "Region", "Recolours FLAME regions named in the prompt (no model weights)"),
        ("ip2p", "Instruct-Pix2Pix", "Multi-view Instruct-Pix2Pix with expression-preserving inpainting")])
    ip2p_model: EnumProperty(name="Model", default="custom", items=[
        ("custom", "From Preferences", "The model id or folder set in the add-on's preferences "
                                       "(empty: timbrooks/instruct-pix2pix)"),
        ("builtin", "Built-in Head", "The small Instruct-Pix2Pix trained on the built-in head (ships with Edit3DGS; "
                                     "it knows only that head)")],
        description="Which Instruct-Pix2Pix weights edit the renders")
    # Copied from edit3dgs.edit.ip2p.IP2PSettings (the defaults shown; tests/blender/test_settings_panel.py checks them)
    steps: IntProperty(name="Steps", default=20, min=1, max=200, description="Denoising steps of Instruct-Pix2Pix")
    guidance_text: FloatProperty(name="Text Guidance", default=7.5, min=0.0, max=30.0,
                                 description="How strongly the edit follows the prompt")
    guidance_image: FloatProperty(name="Image Guidance", default=1.5, min=0.0, max=10.0,
                                  description="How closely the edit keeps the render")
    temporal_keys: BoolProperty(name="Share Key Views Across Time", default=False,
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
    use_all_cameras: BoolProperty(name="All Training Cameras", default=True,
                                  description="Edit from all of the avatar's training cameras (off: the selected "
                                              "Key Views cameras, or the scene camera)")
    timesteps: StringProperty(name="Timesteps", default="",
                              description="Frames of the avatar's sequence to edit, e.g. '0,4,8' or '0-32:4' "
                                          "(empty: spread over the sequence)")
    num_timesteps: IntProperty(name="Timesteps to Use", default=8, min=1, max=1000,
                               description="How many frames, spread over the sequence, the edit sees")
    use_frame_range: BoolProperty(name="Use Frame Range", default=False,
                                  description="Edit the frames from Start to End (every Step)")
    frame_start: IntProperty(name="Start", default=0, min=0, description="First frame of the edit set")
    frame_end: IntProperty(name="End", default=7, min=0, description="Last frame of the edit set")
    frame_step: IntProperty(name="Step", default=1, min=1, description="Every how many frames")
    # masks
    preserve_eyes: BoolProperty(name="Eyes", default=True,
                                description="Keep the eyes' expression from the renders (inpainting)")
    preserve_mouth: BoolProperty(name="Mouth", default=True,
                                 description="Keep the mouth's expression from the renders (inpainting)")
    mask_source: EnumProperty(name="Masks From", description="Where the eye and mouth masks come from", items=[
        ("FLAME", "FLAME Regions", "Render the head model's eye and mouth regions"),
        ("DETECTOR", "Text (Grounding DINO + SAM 2)", "Detect and segment with a text query")])
    mask_text: StringProperty(name="Mask Text", default="eyes, mouth",
                              description="What the detector looks for, comma-separated")
    mask_dilation: IntProperty(name="Mask Dilation", default=1, min=0, max=64,
                               description="Grow the masks by this many latent cells")
    mask_strength: FloatProperty(name="Mask Strength", default=1.0, min=0.0, max=1.0,
                                 description="How much of the original is put back inside the masks")
    local_regions: EnumProperty(name="Edit Only", items=REGION_ITEMS, options={"ENUM_FLAG"}, default=set(),
                                description="Regions to refit (Shift-click for several; none: the whole head)")
    versions_dir: StringProperty(name="Versions Folder", subtype="DIR_PATH", default="//edit3dgs_versions/",
                                 description="Where each edit saves its avatar and rig file ('//': beside the saved "
                                             ".blend file; asked for when the file is not saved yet). Never the "
                                             "extension's own folder, which Blender deletes on uninstall")
    # job state (written by the timer on the main thread)
    status: StringProperty(name="Status", default="", description="State of the last action (its report's icon)")
    stage: StringProperty(name="Stage", default="", description="What the running edit is doing")
    progress: FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, description="How far the edit is")
    report: StringProperty(name="Report", default="", description="The last report of Edit3DGS")
    running: BoolProperty(name="Running", default=False, description="An edit is running in the backend")


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
