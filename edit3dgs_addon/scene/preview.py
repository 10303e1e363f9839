"""The Gaussian preview: one point per Gaussian that follows the rig with no Python handlers.

The object is a mesh of loose vertices carrying the Gaussians' attributes
(written in bulk with ``foreach_set``). A Geometry Nodes modifier places every
point on its bound face of the *deformed* rig mesh (formats.md §1):
    v0, v1, v2 = corners 3b, 3b+1, 3b+2 of the rig mesh (Object Info, relative)
    a0 = normalize(v1 - v0); a1 = normalize(a0 x (v2 - v0)); a2 = -normalize(a1 x a0)
    k = (|v1 - v0| + |a2 . (v2 - v0)|) / 2
    point = center + k (a0 x_l + a1 y_l + a2 z_l),   radius = k * exp(max local log-scale)
then turns them into a point cloud drawn with the Gaussians' colours.
"""

from __future__ import annotations

import bpy
import numpy as np

from ..rigfile import RigFile
from ..shcolor import srgb_to_linear, view_colors

NODE_GROUP = "Edit3DGS Gaussian preview"
MATERIAL = "Edit3DGS Gaussians"
RIG_SOCKET = "Rig"
# mesh attribute name -> (npz key, attribute type, foreach_set field)
ATTRIBUTES = {
    "binding": ("gs_binding", "INT", "value"),
    "gs_xyz": ("gs_xyz", "FLOAT_VECTOR", "vector"),
    "gs_color": ("gs_color", "FLOAT_COLOR", "color"),
    "gs_opacity": ("gs_opacity", "FLOAT", "value"),
    "gs_scale": ("gs_scale", "FLOAT", "value"),
    "gs_scale_rel": ("gs_scale_rel", "FLOAT", "value"),
    "gs_scaling": ("gs_scaling", "FLOAT_VECTOR", "vector"),
    "gs_rotation": ("gs_rotation", "QUATERNION", "value"),
    "gs_region": ("gs_region", "INT", "value"),
}


def _array_for(rig: RigFile, key: str) -> np.ndarray:
    a = rig[key]
    if key == "gs_color":  # scene-linear RGBA (the Gaussians' colours are sRGB values), opacity as alpha
        a = np.concatenate([srgb_to_linear(a), rig["gs_opacity"][:, None]], 1)
    return np.ascontiguousarray(a, dtype=np.int32 if a.dtype.kind in "iu" else np.float32).ravel()


def write_attributes(me: bpy.types.Mesh, rig: RigFile) -> None:
    """Set the Gaussians' attributes in place (resizing the vertex set when the count changed)."""
    n = rig.n_gaussians
    if len(me.vertices) != n:
        me.clear_geometry()
        me.vertices.add(n)
    if "faces_center" in rig.data:
        me.vertices.foreach_set("co", rig["faces_center"].astype(np.float32).ravel())
    for name, (key, typ, field) in ATTRIBUTES.items():
        attr = me.attributes.get(name)
        if attr is None or attr.data_type != typ or attr.domain != "POINT":
            if attr is not None:
                me.attributes.remove(attr)
            attr = me.attributes.new(name, typ, "POINT")
        attr.data.foreach_set(field, _array_for(rig, key))
    me.color_attributes.active_color = me.color_attributes["gs_color"]
    me["edit3dgs_regions"] = [str(r) for r in rig["region_names"]]
    me.update()


def bake_view_colors(obj, rig: RigFile, scene, depsgraph=None) -> str:
    """Colour the preview as the backend renders it from the scene's camera at the current frame: the
    Gaussians' view-dependent colour (SH bands) toward that camera. Returns the camera's name ('' when the
    rig file has no bands or the scene no camera: the colours stay the view-independent ones)."""
    cam = scene.camera
    rest = rig.data.get("gs_sh_rest")
    if cam is None or rest is None or not rest.shape[1] or len(rest) != len(obj.data.vertices):
        obj.data["edit3dgs_colour_view"] = ""
        return ""
    depsgraph = depsgraph or bpy.context.evaluated_depsgraph_get()
    depsgraph.update()
    try:
        means = evaluated_pointcloud_positions(obj, depsgraph)
    except LookupError:  # the artist removed or changed the Follow Rig modifier: the view-independent colours
        obj.data["edit3dgs_colour_view"] = ""
        return ""
    if len(means) != len(rest):
        obj.data["edit3dgs_colour_view"] = ""
        return ""
    eye = obj.matrix_world.inverted() @ cam.evaluated_get(depsgraph).matrix_world.translation
    base = rig.data.get("gs_base_color")  # unclamped (older rig files: the clamped colour)
    rgb = view_colors(rig["gs_color"] if base is None else base, rest, means, np.array(eye, np.float32))
    rgba = np.concatenate([srgb_to_linear(rgb), rig["gs_opacity"][:, None]], 1).astype(np.float32)
    obj.data.attributes["gs_color"].data.foreach_set("color", rgba.ravel())
    obj.data["edit3dgs_colour_view"] = f"{cam.name} @ {scene.frame_current}"
    obj.data.update()
    return cam.name


def read_colors(me: bpy.types.Mesh) -> np.ndarray:
    out = np.empty(len(me.vertices) * 4, np.float32)
    me.attributes["gs_color"].data.foreach_get("color", out)
    return out.reshape(-1, 4)


def _node_group() -> bpy.types.NodeTree:
    ng = bpy.data.node_groups.get(NODE_GROUP)
    if ng is not None:
        return ng
    ng = bpy.data.node_groups.new(NODE_GROUP, "GeometryNodeTree")
    ng.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    ng.interface.new_socket(RIG_SOCKET, in_out="INPUT", socket_type="NodeSocketObject")
    ng.interface.new_socket("Material", in_out="INPUT", socket_type="NodeSocketMaterial")
    ng.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    N, L = ng.nodes, ng.links
    x = [0]

    def node(idname, **props):
        n = N.new(idname)
        for k, v in props.items():
            setattr(n, k, v)
        n.location = (x[0], 0)
        x[0] += 40
        return n

    def vmath(op, a, b=None, scale=None):
        n = node("ShaderNodeVectorMath", operation=op)
        L.new(a, n.inputs[0])
        if b is not None:
            L.new(b, n.inputs[1])
        if scale is not None:
            if isinstance(scale, (int, float)):
                n.inputs[3].default_value = scale
            else:
                L.new(scale, n.inputs[3])
        return n

    def math(op, a, b=None, c=None):
        n = node("ShaderNodeMath", operation=op)
        for i, v in enumerate((a, b, c)):
            if v is None:
                continue
            if isinstance(v, (int, float)):
                n.inputs[i].default_value = v
            else:
                L.new(v, n.inputs[i])
        return n.outputs[0]

    def named(name, dtype):
        n = node("GeometryNodeInputNamedAttribute", data_type=dtype)
        n.inputs["Name"].default_value = name
        return n.outputs["Attribute"]

    gin, gout = node("NodeGroupInput"), node("NodeGroupOutput")
    info = node("GeometryNodeObjectInfo", transform_space="RELATIVE")
    L.new(gin.outputs[RIG_SOCKET], info.inputs["Object"])
    pos = node("GeometryNodeInputPosition").outputs[0]
    b = named("binding", "INT")
    corners = []
    for i in range(3):
        s = node("GeometryNodeSampleIndex", data_type="FLOAT_VECTOR", domain="CORNER")
        L.new(info.outputs["Geometry"], s.inputs["Geometry"])
        L.new(pos, s.inputs["Value"])
        L.new(math("MULTIPLY_ADD", b, 3.0, float(i)), s.inputs["Index"])
        corners.append(s.outputs["Value"])
    v0, v1, v2 = corners
    e1 = vmath("SUBTRACT", v1, v0).outputs[0]
    e2 = vmath("SUBTRACT", v2, v0).outputs[0]
    a0 = vmath("NORMALIZE", e1).outputs[0]
    a1 = vmath("NORMALIZE", vmath("CROSS_PRODUCT", a0, e2).outputs[0]).outputs[0]
    a2n = vmath("NORMALIZE", vmath("CROSS_PRODUCT", a1, a0).outputs[0]).outputs[0]  # a2 = -a2n
    k = math("MULTIPLY", math("ADD", vmath("LENGTH", e1).outputs[1],
                              math("ABSOLUTE", vmath("DOT_PRODUCT", a2n, e2).outputs[1])), 0.5)
    center = vmath("SCALE", vmath("ADD", vmath("ADD", v0, v1).outputs[0], v2).outputs[0], scale=1.0 / 3.0).outputs[0]
    sep = node("ShaderNodeSeparateXYZ")
    L.new(named("gs_xyz", "FLOAT_VECTOR"), sep.inputs[0])
    local = vmath("ADD", vmath("SCALE", a0, scale=sep.outputs[0]).outputs[0],
                  vmath("SCALE", a1, scale=sep.outputs[1]).outputs[0]).outputs[0]
    local = vmath("SUBTRACT", local, vmath("SCALE", a2n, scale=sep.outputs[2]).outputs[0]).outputs[0]
    world = vmath("ADD", center, vmath("SCALE", local, scale=k).outputs[0]).outputs[0]
    setpos = node("GeometryNodeSetPosition")
    L.new(gin.outputs["Geometry"], setpos.inputs["Geometry"])
    L.new(world, setpos.inputs["Position"])
    topts = node("GeometryNodeMeshToPoints", mode="VERTICES")
    L.new(setpos.outputs["Geometry"], topts.inputs["Mesh"])
    L.new(math("MULTIPLY", k, named("gs_scale_rel", "FLOAT")), topts.inputs["Radius"])
    setmat = node("GeometryNodeSetMaterial")
    L.new(topts.outputs["Points"], setmat.inputs["Geometry"])
    L.new(gin.outputs["Material"], setmat.inputs["Material"])
    L.new(setmat.outputs["Geometry"], gout.inputs[0])
    return ng


def _material() -> bpy.types.Material:
    mat = bpy.data.materials.get(MATERIAL)
    if mat is not None:
        return mat
    mat = bpy.data.materials.new(MATERIAL)
    if bpy.app.version < (5, 0, 0) or mat.node_tree is None:
        mat.use_nodes = True  # always on (and deprecated) from Blender 5.0
    nt = mat.node_tree
    nt.nodes.clear()
    attr = nt.nodes.new("ShaderNodeAttribute")
    attr.attribute_type, attr.attribute_name = "GEOMETRY", "gs_color"
    emit = nt.nodes.new("ShaderNodeEmission")
    transp = nt.nodes.new("ShaderNodeBsdfTransparent")
    mix = nt.nodes.new("ShaderNodeMixShader")
    out = nt.nodes.new("ShaderNodeOutputMaterial")
    nt.links.new(attr.outputs["Color"], emit.inputs["Color"])
    nt.links.new(attr.outputs["Alpha"], mix.inputs[0])
    nt.links.new(transp.outputs[0], mix.inputs[1])
    nt.links.new(emit.outputs[0], mix.inputs[2])
    nt.links.new(mix.outputs[0], out.inputs["Surface"])
    return mat


def build_preview(rig: RigFile, name: str, collection, rig_mesh_obj) -> bpy.types.Object:
    me = bpy.data.meshes.new(f"{name}_gaussians")
    write_attributes(me, rig)
    obj = bpy.data.objects.new(f"{name}_gaussians", me)
    collection.objects.link(obj)
    mat = _material()
    obj.data.materials.append(mat)
    mod = obj.modifiers.new("Follow rig", "NODES")
    mod.node_group = _node_group()
    for item in mod.node_group.interface.items_tree:
        if getattr(item, "in_out", None) == "INPUT" and item.name == RIG_SOCKET:
            mod[item.identifier] = rig_mesh_obj
        elif getattr(item, "in_out", None) == "INPUT" and item.name == "Material":
            mod[item.identifier] = mat
    return obj


def evaluated_pointcloud_positions(obj, depsgraph) -> np.ndarray:
    """Positions (N,3) of the evaluated preview points, in the object's space (FLAME axes)."""
    ev = obj.evaluated_get(depsgraph)
    if hasattr(ev, "evaluated_geometry"):  # Blender 4.4+
        geo = ev.evaluated_geometry()  # keep it alive while reading its point cloud
        return _positions(geo.pointcloud)
    for inst in depsgraph.object_instances:  # Blender 4.2: the point cloud is a separate evaluated instance
        o = inst.object
        if o.type == "POINTCLOUD" and o.original == obj.original:
            return _positions(o.data)
    raise LookupError(f"{obj.name}: no evaluated point cloud")


def _positions(pc) -> np.ndarray:
    out = np.empty(len(pc.points) * 3, np.float32)
    pc.attributes["position"].data.foreach_get("vector", out)
    return out.reshape(-1, 3)


def evaluated_radii(obj, depsgraph) -> np.ndarray:
    ev = obj.evaluated_get(depsgraph)
    if hasattr(ev, "evaluated_geometry"):
        geo = ev.evaluated_geometry()  # keep it alive while reading
        pc = geo.pointcloud
    else:
        pc = next(i.object.data for i in depsgraph.object_instances
                  if i.object.type == "POINTCLOUD" and i.object.original == obj.original)
    out = np.empty(len(pc.points), np.float32)
    pc.attributes["radius"].data.foreach_get("value", out)
    return out


evaluated_positions = evaluated_pointcloud_positions
