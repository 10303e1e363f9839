"""Write outputs so that a failure, an interruption or a crash leaves nothing half-written.

Files and folders are written to a hidden temporary sibling and renamed into
place only when complete; an existing output is never replaced unless the
caller says so.

Temporary siblings carry this project's marker in their name,
``.<name>.edit3dgs-<pid>-<random>.part`` (a replaced folder is moved aside
as ``.<name>.edit3dgs-<pid>.old`` for the moment of the swap), and folders
also hold the marker file ``.edit3dgs``. A process killed mid-write (SIGKILL,
power loss) cannot clean up, so every later write of the same output first
removes what a dead process left: ``.part`` siblings, and ``.old`` siblings,
which are renamed back into place when the output itself is missing (the
previous result, caught between the two renames of a swap). Nothing without
the marker, and nothing of a process still running, is ever touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterator

from .errors import Edit3DGSError

MARKER = ".edit3dgs"  # marker file in every folder this project writes
_TAG = "edit3dgs"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: leave its files alone
    return True


def _leftovers(path: Path):
    """(kind, pid, entry) for this project's temporary siblings of ``path``."""
    pat = re.compile(r"^\." + re.escape(path.name) + r"\." + _TAG + r"-(\d+)(?:-[0-9a-f]+)?\.(part|old)$")
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for e in entries:
        m = pat.match(e.name)
        if m:
            yield m.group(2), int(m.group(1)), e


def _is_ours(entry: Path) -> bool:
    # folders must also hold the marker file; a file's marker is its name
    return entry.is_file() and not entry.is_symlink() or (entry.is_dir() and not entry.is_symlink()
                                                            and (entry / MARKER).is_file())


def clean_stale(path: os.PathLike | str) -> list[str]:
    """Remove what dead processes left beside ``path``; put a previous result caught mid-swap back.

    Returns one line per thing done (for messages and tests).
    """
    path = Path(path)
    done = []
    for kind, pid, e in sorted(_leftovers(path), key=lambda t: t[0] == "part"):  # .old first
        if _pid_alive(pid) or not _is_ours(e):
            continue
        if kind == "old" and not os.path.lexists(path):
            os.replace(e, path)
            done.append(f"restored the previous {path} from an interrupted replace")
        elif e.is_dir():
            shutil.rmtree(e, ignore_errors=True)
            done.append(f"removed {e}")
        else:
            e.unlink(missing_ok=True)
            done.append(f"removed {e}")
    return done


def _tmp_name(path: Path, kind: str) -> Path:
    suffix = f"-{secrets.token_hex(4)}" if kind == "part" else ""
    return path.with_name(f".{path.name}.{_TAG}-{os.getpid()}{suffix}.{kind}")


def is_project_folder(path: Path) -> bool:
    """A folder this project wrote: the marker file, or an avatar.json of ours (folders from before the marker)."""
    if (path / MARKER).is_file():
        return True
    try:
        import json

        meta = json.loads((path / "avatar.json").read_text())
        return isinstance(meta, dict) and meta.get("format") == "edit3dgs-avatar"
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def atomic_path(path: os.PathLike | str, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; rename it to ``path`` on success."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise Edit3DGSError(path, "a path that does not exist yet", "an existing file")
    if path.is_dir():
        raise Edit3DGSError(path, "a file path", "a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = _tmp_name(path, "part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_umask())
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_dir_output(path: os.PathLike | str, overwrite: bool = False) -> None:
    """The refusals of ``atomic_dir``, without writing: a long job calls it before it starts, so
    that an output it may not write is refused at once rather than after the work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise Edit3DGSError(path, "an output folder", "a file")
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise Edit3DGSError(path, "an empty or new output folder (or --overwrite)", "a folder with files in it")
        if not is_project_folder(path):
            raise Edit3DGSError(path, f"a folder this program wrote (with its '{MARKER}' marker) to overwrite",
                                "a folder without it; nothing was changed (an output of an older version: "
                                "remove it yourself)")


@contextlib.contextmanager
def atomic_dir(path: os.PathLike | str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; rename it to ``path`` on success.

    With ``overwrite=False`` an existing non-empty ``path`` is an error, so an
    artist's earlier result is never lost; with ``overwrite=True`` only a
    folder this project wrote is replaced. The replace is a swap of two
    renames; if it fails or is interrupted between them, the previous result
    is put back.
    """
    path = Path(path)
    if path.parent.exists() or path.exists():
        clean_stale(path)
    check_dir_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path, "part")
    os.mkdir(tmp, 0o777 & ~_umask())
    (tmp / MARKER).write_text('{"written_by": "edit3dgs"}\n')
    try:
        yield tmp
        if path.exists():
            old = _tmp_name(path, "old")
            shutil.rmtree(old, ignore_errors=True)
            try:
                os.replace(path, old)
                os.replace(tmp, path)
            except BaseException:
                # failed or interrupted between the renames: the previous result goes back
                if old.exists() and not os.path.lexists(path):
                    os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_output(out: os.PathLike | str, inputs: dict, option: str = "--out") -> None:
    """The one output-path policy: after resolving ``..`` and symlinks, an output is never an input,
    inside an input, or a folder that contains an input. ``inputs`` maps a label (an option
    name) to a path, a list of paths, or None; paths that do not exist are not inputs."""
    o = Path(os.path.realpath(out))
    for label, value in inputs.items():
        for p in value if isinstance(value, (list, tuple)) else [value]:
            if p is None or not isinstance(p, (str, os.PathLike)) or not str(p) or not os.path.lexists(p):
                continue
            r = Path(os.path.realpath(p))
            if o == r:
                found = f"the input {label} itself ({r})"
            elif o.is_relative_to(r):
                found = f"a path inside the input {label} ({r})"
            elif r.is_relative_to(o):
                found = f"a folder that contains the input {label} ({r})"
            else:
                continue
            raise Edit3DGSError(f"{option} {out}", "an output path outside every input", found)


def check_output_path(out: os.PathLike | str, option: str = "--out") -> None:
    """An output path the system can create: no NUL byte, names of at most 255 bytes, and below the
    nearest existing ancestor only folders (a file there cannot hold it), which must be writable."""
    text = os.fspath(out)
    where = f"{option} {text!r}" if "\0" in text else f"{option} {text}"
    if "\0" in text:
        raise Edit3DGSError(where, "a path without NUL characters", "a NUL character")
    p = Path(os.path.abspath(text))
    long = [part for part in p.parts if len(os.fsencode(part)) > 255]
    if long:
        raise Edit3DGSError(where, "file and folder names of at most 255 bytes", f"a name of {len(os.fsencode(long[0]))} bytes")
    anc = p.parent if p.parent != p else p
    while not os.path.lexists(anc) and anc.parent != anc:
        anc = anc.parent
    if not anc.is_dir():
        raise Edit3DGSError(where, "a path below folders", f"{anc}, a file, in its way")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise Edit3DGSError(where, "a path in a folder you can write", f"{anc}, which is read-only to you")
