"""The Gaussian preview: one point per Gaussian that follows the rig with no Python handlers.

The object is a mesh of loose vertices carrying the Gaussians' attributes
(written in bulk with ``foreach_set``). A Geometry Nodes modifier places every
point on its bound face of the *deformed* rig mesh (formats.md §1):
    v0, v1, v2 = corners 3b, 3b+1, 3b+2 of the rig mesh (Object Info, relative)
    a0 = normalize(v1 - v0); a1 = normalize(a0 x (v2 - v0)); a2 = -normalize(a1 x a0)
    k = (|v1 - v0| + |a2 . (v2 - v0)|) / 2
    point = center + k (a0 x_l + a1 y_l + a2 z_l),   sigma = k * exp(max local log-scale)
then turns them into a point cloud, a sphere of radius ``extent * sigma`` per
Gaussian (where its alpha falls below 1/255, as the backend cuts it off) whose
material fades as the Gaussian does (alpha = opacity exp(-d^2 / 2 sigma^2) at
the ray's distance d from the centre), coloured as the backend renders it from the
scene's active camera, evaluated in the same tree at every frame: the SH bands
toward the camera added to the unclamped base colour, clamped, sRGB -> scene-linear
(``shcolor.view_colors`` and ``srgb_to_linear``, node for node).
"""

from __future__ import annotations

import bpy
import numpy as np

from ..rigfile import RigFile
from ..shcolor import C1, C2, C3, gaussian_extent, srgb_to_linear

NODE_GROUP = "Edit3DGS Gaussian preview"
MATERIAL = "Edit3DGS Gaussians"
RIG_SOCKET = "Rig"
VIEW_SOCKET = "View-Dependent Colour"  # the modifier's switch: off, the view-independent colours (no per-frame work)
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


SH_ATTRIBUTES = tuple(f"gs_sh_{k:02d}" for k in range(1, 16))  # the SH bands above DC, one RGB vector each
NODES_VERSION = 3  # the node group's and the material's layout; older ones (from an older add-on) are rebuilt


def _array_for(rig: RigFile, key: str) -> np.ndarray:
    a = rig[key]
    if key == "gs_color":  # scene-linear RGBA (the Gaussians' colours are sRGB values), opacity as alpha
        a = np.concatenate([srgb_to_linear(a), rig["gs_opacity"][:, None]], 1)
    return np.ascontiguousarray(a, dtype=np.int32 if a.dtype.kind in "iu" else np.float32).ravel()


def _set(me: bpy.types.Mesh, name: str, typ: str, field: str, values: np.ndarray) -> None:
    attr = me.attributes.get(name)
    if attr is None or attr.data_type != typ or attr.domain != "POINT":
        if attr is not None:
            me.attributes.remove(attr)
        attr = me.attributes.new(name, typ, "POINT")
    attr.data.foreach_set(field, values)


def write_attributes(me: bpy.types.Mesh, rig: RigFile) -> None:
    """Set the Gaussians' attributes in place (resizing the vertex set when the count changed).

    ``gs_color`` is the view-independent colour (scene-linear, opacity as alpha); the Follow Rig modifier
    replaces it on the point cloud with the colour seen from the active camera, from ``gs_base_color``
    (display values, unclamped) and the SH bands ``gs_sh_01..15`` (those the rig file has)."""
    n = rig.n_gaussians
    if len(me.vertices) != n:
        me.clear_geometry()
        me.vertices.add(n)
    if "faces_center" in rig.data:
        me.vertices.foreach_set("co", rig["faces_center"].astype(np.float32).ravel())
    for name, (key, typ, field) in ATTRIBUTES.items():
        _set(me, name, typ, field, _array_for(rig, key))
    _set(me, "gs_extent", "FLOAT", "value", gaussian_extent(rig["gs_opacity"]))
    base = rig.data.get("gs_base_color")  # older rig files: the clamped colour
    _set(me, "gs_base_color", "FLOAT_VECTOR", "vector",
         np.ascontiguousarray(rig["gs_color"] if base is None else base, np.float32).ravel())
    rest = rig.data.get("gs_sh_rest")
    bands = 0 if rest is None else rest.shape[1]
    for k, name in enumerate(SH_ATTRIBUTES):
        if k < bands:
            _set(me, name, "FLOAT_VECTOR", "vector", np.ascontiguousarray(rest[:, k], np.float32).ravel())
        elif name in me.attributes:  # fewer bands than the version before: a missing one reads as zero
            me.attributes.remove(me.attributes[name])
    me.color_attributes.active_color = me.color_attributes["gs_color"]
    me["edit3dgs_regions"] = [str(r) for r in rig["region_names"]]
    me.update()


def read_colors(me: bpy.types.Mesh) -> np.ndarray:
    out = np.empty(len(me.vertices) * 4, np.float32)
    me.attributes["gs_color"].data.foreach_get("color", out)
    return out.reshape(-1, 4)


class _Builder:
    """Adds linked nodes to a node tree; inputs are sockets or constants."""

    def __init__(self, tree):
        self.N, self.L, self.x = tree.nodes, tree.links, 0

    def node(self, idname, **props):
        n = self.N.new(idname)
        for k, v in props.items():
            setattr(n, k, v)
        n.location = (self.x, 0)
        self.x += 40
        return n

    def _inputs(self, n, *args):
        for i, v in enumerate(args):
            if v is None:
                continue
            if isinstance(v, (int, float, tuple)):
                n.inputs[i].default_value = v
            else:
                self.L.new(v, n.inputs[i])
        return n

    def math(self, op, a, b=None, c=None):
        return self._inputs(self.node("ShaderNodeMath", operation=op), a, b, c).outputs[0]

    def vmath(self, op, a, b=None, c=None, scale=None):
        n = self._inputs(self.node("ShaderNodeVectorMath", operation=op), a, b, c)
        if scale is not None:
            self._inputs(n, None, None, None, scale)
        return n.outputs[1 if op in ("DOT_PRODUCT", "LENGTH", "DISTANCE") else 0]

    def named(self, name, dtype, output="Attribute"):
        n = self.node("GeometryNodeInputNamedAttribute", data_type=dtype)
        n.inputs["Name"].default_value = name
        return n.outputs[output]

    def separate(self, v):
        n = self.node("ShaderNodeSeparateXYZ")
        self.L.new(v, n.inputs[0])
        return n.outputs[0], n.outputs[1], n.outputs[2]


def sh_color_nodes(B: _Builder, position, eye):
    """Nodes for the backend's colour of each point seen from ``eye`` (shcolor.view_colors, then
    srgb_to_linear): (r, g, b) scene-linear sockets."""
    x, y, z = B.separate(B.vmath("NORMALIZE", B.vmath("SUBTRACT", position, eye)))
    m = B.math
    xx, yy, zz = m("MULTIPLY", x, x), m("MULTIPLY", y, y), m("MULTIPLY", z, z)
    xy, yz, xz = m("MULTIPLY", x, y), m("MULTIPLY", y, z), m("MULTIPLY", x, z)
    s = m("ADD", xx, yy)  # xx + yy
    d = m("SUBTRACT", xx, yy)  # xx - yy
    q = m("MULTIPLY_ADD", zz, 4.0, m("MULTIPLY", s, -1.0))  # 4zz - xx - yy
    basis = [  # the order and constants of backend/edit3dgs/render/sh.py (shcolor.sh_rest)
        m("MULTIPLY", y, -C1), m("MULTIPLY", z, C1), m("MULTIPLY", x, -C1),
        m("MULTIPLY", xy, C2[0]), m("MULTIPLY", yz, C2[1]),
        m("MULTIPLY", m("MULTIPLY_ADD", zz, 2.0, m("MULTIPLY", s, -1.0)), C2[2]),
        m("MULTIPLY", xz, C2[3]), m("MULTIPLY", d, C2[4]),
        m("MULTIPLY", m("MULTIPLY", y, m("MULTIPLY_ADD", xx, 3.0, m("MULTIPLY", yy, -1.0))), C3[0]),
        m("MULTIPLY", m("MULTIPLY", xy, z), C3[1]),
        m("MULTIPLY", m("MULTIPLY", y, q), C3[2]),
        m("MULTIPLY", m("MULTIPLY", z, m("MULTIPLY_ADD", zz, 2.0, m("MULTIPLY", s, -3.0))), C3[3]),
        m("MULTIPLY", m("MULTIPLY", x, q), C3[4]),
        m("MULTIPLY", m("MULTIPLY", z, d), C3[5]),
        m("MULTIPLY", m("MULTIPLY", x, m("MULTIPLY_ADD", yy, -3.0, xx)), C3[6]),
    ]
    acc = B.named("gs_base_color", "FLOAT_VECTOR")
    for name, w in zip(SH_ATTRIBUTES, basis):  # a band the rig file lacks reads as zero
        acc = B.vmath("MULTIPLY_ADD", B.named(name, "FLOAT_VECTOR"), w, acc)
    acc = B.vmath("MINIMUM", B.vmath("MAXIMUM", acc, (0.0, 0.0, 0.0)), (1.0, 1.0, 1.0))
    out = []
    for c in B.separate(acc):  # sRGB -> scene-linear, the IEC curve (shcolor.srgb_to_linear)
        lo = m("DIVIDE", c, 12.92)
        hi = m("POWER", m("MULTIPLY_ADD", c, 1.0 / 1.055, 0.055 / 1.055), 2.4)
        out.append(m("MULTIPLY_ADD", m("LESS_THAN", c, 0.04045), m("SUBTRACT", lo, hi), hi))
    return out


def _node_group() -> bpy.types.NodeTree:
    ng = bpy.data.node_groups.get((NODE_GROUP, None))   # the file's own (a library's is read-only)
    if ng is not None and ng.get("edit3dgs_nodes") == NODES_VERSION:
        return ng
    if ng is None:
        ng = bpy.data.node_groups.new(NODE_GROUP, "GeometryNodeTree")
    names = {(i.in_out, i.name) for i in ng.interface.items_tree if hasattr(i, "in_out")}
    for name, io, typ in (("Geometry", "INPUT", "NodeSocketGeometry"), (RIG_SOCKET, "INPUT", "NodeSocketObject"),
                          ("Material", "INPUT", "NodeSocketMaterial"), (VIEW_SOCKET, "INPUT", "NodeSocketBool"),
                          ("Geometry", "OUTPUT", "NodeSocketGeometry")):
        if (io, name) not in names:  # an older group keeps its sockets (and the modifiers their inputs)
            sock = ng.interface.new_socket(name, in_out=io, socket_type=typ)
            if name == VIEW_SOCKET:
                sock.default_value = True
                sock.description = ("Colour each Gaussian as seen from the active camera at every frame (off: "
                                    "the view-independent colours; saves the per-frame work on very large avatars)")
                for obj in bpy.data.objects:   # existing modifiers got the bool's own default (False) at new_socket
                    for mod in obj.modifiers:
                        if mod.type == "NODES" and mod.node_group == ng and obj.library is None:
                            mod[sock.identifier] = True
    ng.nodes.clear()
    B = _Builder(ng)
    L, math, vmath, named = B.L, B.math, B.vmath, B.named

    gin, gout = B.node("NodeGroupInput"), B.node("NodeGroupOutput")
    info = B.node("GeometryNodeObjectInfo", transform_space="RELATIVE")
    L.new(gin.outputs[RIG_SOCKET], info.inputs["Object"])
    pos = B.node("GeometryNodeInputPosition").outputs[0]
    b = named("binding", "INT")
    corners = []
    for i in range(3):
        s = B.node("GeometryNodeSampleIndex", data_type="FLOAT_VECTOR", domain="CORNER")
        L.new(info.outputs["Geometry"], s.inputs["Geometry"])
        L.new(pos, s.inputs["Value"])
        L.new(math("MULTIPLY_ADD", b, 3.0, float(i)), s.inputs["Index"])
        corners.append(s.outputs["Value"])
    v0, v1, v2 = corners
    e1 = vmath("SUBTRACT", v1, v0)
    e2 = vmath("SUBTRACT", v2, v0)
    a0 = vmath("NORMALIZE", e1)
    a1 = vmath("NORMALIZE", vmath("CROSS_PRODUCT", a0, e2))
    a2n = vmath("NORMALIZE", vmath("CROSS_PRODUCT", a1, a0))  # a2 = -a2n
    k = math("MULTIPLY", math("ADD", vmath("LENGTH", e1), math("ABSOLUTE", vmath("DOT_PRODUCT", a2n, e2))), 0.5)
    center = vmath("SCALE", vmath("ADD", vmath("ADD", v0, v1), v2), scale=1.0 / 3.0)
    xl, yl, zl = B.separate(named("gs_xyz", "FLOAT_VECTOR"))
    local = vmath("ADD", vmath("SCALE", a0, scale=xl), vmath("SCALE", a1, scale=yl))
    local = vmath("SUBTRACT", local, vmath("SCALE", a2n, scale=zl))
    world = vmath("ADD", center, vmath("SCALE", local, scale=k))
    setpos = B.node("GeometryNodeSetPosition")
    L.new(gin.outputs["Geometry"], setpos.inputs["Geometry"])
    L.new(world, setpos.inputs["Position"])
    topts = B.node("GeometryNodeMeshToPoints", mode="VERTICES")
    L.new(setpos.outputs["Geometry"], topts.inputs["Mesh"])
    sigma = math("MULTIPLY", k, named("gs_scale_rel", "FLOAT"))  # of the largest axis
    L.new(math("MULTIPLY", sigma, named("gs_extent", "FLOAT")), topts.inputs["Radius"])

    # the colour seen from the active camera, per point and per frame (no handlers): the SH bands toward it
    cam = B.node("GeometryNodeObjectInfo", transform_space="RELATIVE")  # its location in this object's space
    L.new(B.node("GeometryNodeInputActiveCamera").outputs[0], cam.inputs["Object"])
    r, g, bl = sh_color_nodes(B, B.node("GeometryNodeInputPosition").outputs[0], cam.outputs["Location"])
    rgba = B.node("FunctionNodeCombineColor", mode="RGB")
    for i, v in enumerate((r, g, bl, named("gs_opacity", "FLOAT"))):
        L.new(v, rgba.inputs[i])
    store = B.node("GeometryNodeStoreNamedAttribute", data_type="FLOAT_COLOR", domain="POINT")
    store.inputs["Name"].default_value = "gs_color"
    L.new(topts.outputs["Points"], store.inputs["Geometry"])
    L.new(rgba.outputs[0], store.inputs["Value"])
    # with no active camera (its scale reads as zero), or on a preview from an older add-on (no base colour),
    # the points keep the view-independent colours write_attributes gave them
    both = B.node("FunctionNodeBooleanMath", operation="AND")
    L.new(named("gs_base_color", "FLOAT_VECTOR", "Exists"), both.inputs[0])
    L.new(math("GREATER_THAN", vmath("LENGTH", cam.outputs["Scale"]), 0.0), both.inputs[1])
    wanted = B.node("FunctionNodeBooleanMath", operation="AND")   # and the modifier's View-Dependent Colour
    L.new(both.outputs[0], wanted.inputs[0])
    L.new(gin.outputs[VIEW_SOCKET], wanted.inputs[1])
    L.new(wanted.outputs[0], store.inputs["Selection"])

    setmat = B.node("GeometryNodeSetMaterial")
    L.new(store.outputs["Geometry"], setmat.inputs["Geometry"])
    L.new(gin.outputs["Material"], setmat.inputs["Material"])
    L.new(setmat.outputs["Geometry"], gout.inputs[0])
    ng["edit3dgs_nodes"] = NODES_VERSION
    return ng


def _material() -> bpy.types.Material:
    """Emission of ``gs_color`` over Transparent with the Gaussian's alpha along each ray: opacity *
    exp(-d^2 / 2 sigma^2), d the ray's distance from the point's centre (Point Info), sigma = radius / extent."""
    mat = bpy.data.materials.get((MATERIAL, None))
    if mat is not None and mat.get("edit3dgs_nodes") == NODES_VERSION:
        return mat
    if mat is None:
        mat = bpy.data.materials.new(MATERIAL)
    if bpy.app.version < (5, 0, 0) or mat.node_tree is None:
        mat.use_nodes = True  # always on (and deprecated) from Blender 5.0
    nt = mat.node_tree
    nt.nodes.clear()
    B = _Builder(nt)
    color = B.node("ShaderNodeAttribute", attribute_type="GEOMETRY", attribute_name="gs_color")
    extent = B.node("ShaderNodeAttribute", attribute_type="GEOMETRY", attribute_name="gs_extent").outputs[2]
    point, geo = B.node("ShaderNodePointInfo"), B.node("ShaderNodeNewGeometry")
    # d^2 = |(P - centre) x I|^2 with I the unit direction toward the viewer
    c = B.vmath("CROSS_PRODUCT", B.vmath("SUBTRACT", geo.outputs["Position"], point.outputs["Position"]),
                geo.outputs["Incoming"])
    inv_sigma = B.math("DIVIDE", extent, point.outputs["Radius"])
    q = B.math("MULTIPLY", B.vmath("DOT_PRODUCT", c, c), B.math("MULTIPLY", inv_sigma, inv_sigma))
    alpha = B.math("MULTIPLY", color.outputs["Alpha"], B.math("EXPONENT", B.math("MULTIPLY", q, -0.5)))
    # once per Gaussian: a ray leaving its sphere (the back face) passes through (Cycles never hits the same
    # point twice in a row; a rasterizer drawing back faces would)
    alpha = B.math("MULTIPLY", alpha, B.math("SUBTRACT", 1.0, geo.outputs["Backfacing"]))
    emit, transp = B.node("ShaderNodeEmission"), B.node("ShaderNodeBsdfTransparent")
    mix, out = B.node("ShaderNodeMixShader"), B.node("ShaderNodeOutputMaterial")
    B.L.new(color.outputs["Color"], emit.inputs["Color"])
    B.L.new(alpha, mix.inputs[0])
    B.L.new(transp.outputs[0], mix.inputs[1])
    B.L.new(emit.outputs[0], mix.inputs[2])
    B.L.new(mix.outputs[0], out.inputs["Surface"])
    mat["edit3dgs_nodes"] = NODES_VERSION
    return mat


def ensure_nodes() -> None:
    """Bring the preview's node group and material up to date (in place: every preview using them follows),
    and every mesh they draw: a preview or Compare copy from an older add-on gets the sphere extent the new
    nodes read (from its own opacities; without it its points would have radius 0 and vanish). Its colours
    stay the view-independent ones until it is applied again (it has no SH bands)."""
    ng, _ = _node_group(), _material()
    for obj in bpy.data.objects:
        me = obj.data
        if (obj.type == "MESH" and me.library is None and "gs_extent" not in me.attributes
                and "gs_opacity" in me.attributes
                and any(m.type == "NODES" and m.node_group == ng for m in obj.modifiers)):
            opacity = np.empty(len(me.vertices), np.float32)
            me.attributes["gs_opacity"].data.foreach_get("value", opacity)
            _set(me, "gs_extent", "FLOAT", "value", gaussian_extent(opacity))
            me.update()


def build_preview(rig: RigFile, name: str, collection, rig_mesh_obj) -> bpy.types.Object:
    me = bpy.data.meshes.new(f"{name}_gaussians")
    write_attributes(me, rig)
    obj = bpy.data.objects.new(f"{name}_gaussians", me)
    collection.objects.link(obj)
    ensure_nodes()   # an older .blend's other previews follow the rebuilt nodes too
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


def _evaluated_pointcloud(obj, depsgraph):
    """(keep-alive, point cloud) of the evaluated preview; hold the first while reading the second."""
    ev = obj.evaluated_get(depsgraph)
    if hasattr(ev, "evaluated_geometry"):  # Blender 4.4+
        geo = ev.evaluated_geometry()
        return geo, geo.pointcloud
    for inst in depsgraph.object_instances:  # Blender 4.2: the point cloud is a separate evaluated instance
        o = inst.object
        if o.type == "POINTCLOUD" and o.original == obj.original:
            return o, o.data
    raise LookupError(f"{obj.name}: no evaluated point cloud")


def evaluated_attribute(obj, depsgraph, name: str) -> np.ndarray:
    """An attribute of the evaluated preview's points: (N,) or (N, width)."""
    keep, pc = _evaluated_pointcloud(obj, depsgraph)
    attr = pc.attributes[name]
    field, width = {"FLOAT": ("value", 1), "INT": ("value", 1), "FLOAT_VECTOR": ("vector", 3),
                    "FLOAT_COLOR": ("color", 4)}[attr.data_type]
    out = np.empty(len(pc.points) * width, np.int32 if attr.data_type == "INT" else np.float32)
    attr.data.foreach_get(field, out)
    del keep
    return out if width == 1 else out.reshape(-1, width)


def evaluated_pointcloud_positions(obj, depsgraph) -> np.ndarray:
    """Positions (N,3) of the evaluated preview points, in the object's space (FLAME axes)."""
    return evaluated_attribute(obj, depsgraph, "position")


def evaluated_radii(obj, depsgraph) -> np.ndarray:
    return evaluated_attribute(obj, depsgraph, "radius")


def evaluated_colors(obj, depsgraph) -> np.ndarray:
    """(N,4) the colours the material reads: scene-linear RGB seen from the active camera, opacity as alpha."""
    return evaluated_attribute(obj, depsgraph, "gs_color")


evaluated_positions = evaluated_pointcloud_positions
