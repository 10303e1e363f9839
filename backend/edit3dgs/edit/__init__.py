"""Editors: the region editor (no weights) and Instruct-Pix2Pix (multi-view batch editing)."""

from .base import EditRequest, Editor, Progress, no_progress

__all__ = ["EditRequest", "Editor", "Progress", "no_progress", "make_editor"]


def make_editor(name: str, **options) -> Editor:
    """The editor called ``name`` ("region" or "ip2p") with its options."""
    from ..errors import Edit3DGSError

    if name == "region":
        from .region import RegionEditor

        return RegionEditor(**options)
    if name == "ip2p":
        from .ip2p import InstructPix2PixEditor

        return InstructPix2PixEditor(**options)
    raise Edit3DGSError("--editor", "region or ip2p", repr(name))
