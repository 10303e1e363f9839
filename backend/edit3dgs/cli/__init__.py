"""The ``edit3dgs`` command line: ``main()``, and ``build_parser`` listing every command. One module per
group of commands (``add_*_args``, ``cmd_*``); what they share is in ``common``.

Every user error ends with one line ``error: <file>: expected ..., found ...``
and exit status 2 (a traceback only with ``--debug``); outputs are written to
a temporary path and renamed, so a failed command leaves nothing behind.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import CancelledError, Edit3DGSError
from . import avatar, demo, edit, evaluate, serve, train_editor


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edit3dgs", description="Edit FLAME-bound 3D Gaussian head avatars with text.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--threads", default=None,
                   help="CPU threads: 'auto' (default, or EDIT3DGS_THREADS): the cores other processes leave free")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_, add_args, run in (  # every command: its name, help, flags and what runs it
        ("make-avatar", "write the built-in avatar (no licence-gated data needed)",
         avatar.add_make_avatar_args, avatar.cmd_make_avatar),
        ("render", "render an avatar from cameras at timesteps to PNGs", avatar.add_render_args, avatar.cmd_render),
        ("export", "write one timestep as a standard world-space 3DGS PLY", avatar.add_export_args, avatar.cmd_export),
        ("capture", "write an avatar's renders as a GaussianAvatars/VHAP multi-view dataset",
         avatar.add_capture_args, avatar.cmd_capture),
        ("demo", "build the built-in avatar, edit it, write a before/after report", demo.add_demo_args, demo.cmd_demo),
        ("edit", "edit an avatar with a sentence (render -> edit -> refit)", edit.add_edit_args, edit.cmd_edit),
        ("eval", "CLIP-S and CLIP-C of an edit (novel view, self- and cross-reenactment)",
         evaluate.add_eval_args, evaluate.cmd_eval),
        ("train-editor", "train the small Instruct-Pix2Pix editor of the built-in head",
         train_editor.add_train_editor_args, train_editor.cmd_train_editor),
        ("serve", "talk to Blender: NUL-delimited JSON jobs on stdin/stdout", serve.add_serve_args, serve.cmd_serve),
    ):
        s = sub.add_parser(name, help=help_)
        add_args(s)
        s.set_defaults(func=run)
    return p


# Options that name files or folders a command reads, and those it writes (every command, one policy).
INPUT_OPTIONS = ("avatar", "flame", "flame_masks", "cameras", "flame_params", "original", "edited", "model", "clip",
                 "held_out_sequence", "cross_sequence")
OUTPUT_OPTIONS = ("out", "json")


def check_outputs(a) -> None:
    from ..fsutil import check_output, check_output_path

    inputs = {"--" + k.replace("_", "-"): getattr(a, k, None) for k in INPUT_OPTIONS}
    for k in OUTPUT_OPTIONS:
        v = getattr(a, k, None)
        if isinstance(v, (str, os.PathLike)) and str(v):
            check_output_path(v, "--" + k)
            check_output(v, inputs, "--" + k)


def _stamp(path) -> tuple | None:
    try:
        st = os.stat(path)
    except (OSError, TypeError, ValueError):
        return None
    return st.st_ino, st.st_mtime_ns


def interrupted_message(out, before: tuple | None) -> str:
    """What an interruption left at ``out``, read from the disk (not assumed)."""
    if not out:
        return "interrupted; the input is untouched and no partial output was kept"
    now = _stamp(out)
    if now is None:
        state = f"nothing was written to {out}" + (" (the previous result there is gone)" if before else "")
    elif now == before:
        state = f"{out} is as it was before this run"
    else:
        state = f"{out} was completed before the interruption"
    return f"interrupted; the input is untouched, no partial output was kept, and {state}"


def main(argv=None) -> int:
    from .. import threads

    parser = build_parser()
    args, rest = [], list(sys.argv[1:] if argv is None else argv)
    while rest:  # "--up -y": argparse would take "-y" for an option
        x = rest.pop(0)
        if x == "--up" and rest[:1] == ["-y"]:
            x = "--up=" + rest.pop(0)
        args.append(x)
    a = parser.parse_args(args)
    out = getattr(a, "out", None)
    before = _stamp(out) if out else None
    try:
        threads.apply(a.threads)
        check_outputs(a)
        return a.func(a)
    except Edit3DGSError as exc:
        if a.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # what the system refused (a read-only folder, a full disk): one line too
        if a.debug:
            raise
        where = exc.filename if exc.filename is not None else out
        print(f"error: {Edit3DGSError(where, 'a file or folder this program can read and write', exc.strerror or str(exc))}",
              file=sys.stderr)
        return 2
    except (KeyboardInterrupt, CancelledError):
        print(f"error: {interrupted_message(out, before)}", file=sys.stderr)
        return 130

