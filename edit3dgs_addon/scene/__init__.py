"""bpy code that creates things in the scene (like glTF-Blender-IO's ``blender/``): rig, preview, cameras."""
