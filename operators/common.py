"""Small helpers shared by the operators (finding the avatar's objects, reporting)."""

from __future__ import annotations

import bpy


def preview_object(context):
    """The active avatar's Gaussian preview: the active object or its avatar's, else the first in the scene."""
    obj = context.active_object
    if obj is not None:
        if obj.get("edit3dgs_role") == "preview":
            return obj
        folder = obj.get("edit3dgs_avatar")
        root = obj
        while root.parent is not None:
            root = root.parent
        for child in root.children_recursive if folder else ():
            if child.get("edit3dgs_role") == "preview":
                return child
    for o in context.scene.objects:
        if o.get("edit3dgs_role") == "preview":
            return o
    return None


def avatar_root(obj):
    while obj is not None and obj.get("edit3dgs_role") != "root":
        obj = obj.parent
    return obj


def deny(cls, why: str) -> bool:
    """``poll()``'s "no": the button greys out and its tooltip says ``why``."""
    cls.poll_message_set(why)
    return False


def has_versions(context, what: str):
    """(preview, "") when the scene has an avatar with a history, else (None, the reason ``what`` cannot run)."""
    prev = preview_object(context)
    if prev is None:
        return None, f"Import a Gaussian avatar to {what}"
    if not len(prev.edit3dgs.versions):
        return None, f"The avatar has no versions to {what}"
    return prev, ""


def note(context, text: str, status: str = "INFO") -> None:
    """Keep the last report on the panel (a timer cannot call Operator.report). The status is always
    set with it, so the icon beside a report is that report's (a success never shows a failure's icon)."""
    s = context.scene.edit3dgs
    s.report = text
    s.status = status
    print(f"Edit3DGS: {text}")


def fail(op, context, text: str) -> set:
    """Report a failure on the panel and as the operator's error; the operator's return value."""
    note(context, text, "FAILED")
    op.report({"ERROR"}, text)
    return {"CANCELLED"}
