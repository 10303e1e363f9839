"""Edit3DGS for Blender: import FLAME-bound Gaussian head avatars, edit them with a sentence.

In the installed extension this folder is the package root, with ``operators``
and ``panels`` beside its modules (build.py lays them out); the backend's
source travels in ``backend/`` and runs in its own Python (never inside Blender).
bpy-free modules (protocol, bridge, installer, rigfile, jobargs) import
without Blender, so they are tested on their own.
"""


def register():
    import bpy

    from . import operators, panels, prefs, props

    props.register()
    bpy.utils.register_class(prefs.Edit3DGSPreferences)
    operators.register()
    panels.register()


def unregister():
    import bpy

    from . import operators, panels, prefs, props, runtime

    runtime.shutdown()
    panels.unregister()
    operators.unregister()
    bpy.utils.unregister_class(prefs.Edit3DGSPreferences)
    props.unregister()
