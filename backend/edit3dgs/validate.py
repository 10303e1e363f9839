"""The checks every input boundary shares: limits on sizes, real finite numbers, whole numbers, JSON files.

Each loader (PLY, npz, FLAME pickle, avatar.json, camera files, CLI ranges, output paths)
calls these at its boundary, so a bad input ends as one ``Edit3DGSError`` naming the file,
what was expected and what was found, before anything large is allocated or rendered.

Limits on what would allocate without bound are named in their messages, with the
environment variable that raises them for a user who really needs more:

=============================  ===========================================  ===========
setting                        bounds                                       default
=============================  ===========================================  ===========
EDIT3DGS_MAX_IMAGE_SIDE        width and height of a camera's image         8192 px
EDIT3DGS_MAX_GAUSSIANS         Gaussians in a PLY                           10,000,000
EDIT3DGS_MAX_NPZ_BYTES         arrays of an .npz, inflated                  1 GiB
EDIT3DGS_MAX_JSON_BYTES        a JSON file (avatar.json, cameras)           128 MiB
EDIT3DGS_MAX_LIST_ITEMS        items of a list option (--timesteps, ...)    100,000
EDIT3DGS_MAX_PICKLE_BYTES      a FLAME pickle file                          1 GiB
EDIT3DGS_MAX_PICKLE_ELEMENTS   array elements of a FLAME pickle, expanded   50,000,000
=============================  ===========================================  ===========
"""

from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .errors import Edit3DGSError


def limit(name: str, default: int) -> int:
    """The setting ``EDIT3DGS_<name>`` (a positive whole number), else ``default``; read when used."""
    var = f"EDIT3DGS_{name}"
    text = os.environ.get(var, "").strip().replace("_", "")
    if not text:
        return default
    try:
        v = int(text)
    except ValueError:
        raise Edit3DGSError(f"${var}", "a positive whole number", repr(os.environ[var])[:40]) from None
    if v < 1:
        raise Edit3DGSError(f"${var}", "a positive whole number", repr(os.environ[var])[:40])
    return v


def limit_note(name: str) -> str:
    return f"(the limit; raise it with EDIT3DGS_{name})"


def at_most(path, what: str, value: int, name: str, default: int) -> None:
    """Refuse ``value`` above the limit ``EDIT3DGS_<name>``; the message names it."""
    lim = limit(name, default)
    if value > lim:
        raise Edit3DGSError(path, f"at most {lim:,} {what} {limit_note(name)}", f"{value:,}")


# -- numbers ---------------------------------------------------------------------------------------------------------

REAL_KINDS = "fiu"  # float, signed and unsigned integers: not bool, complex, text, bytes, objects, dates


def real_array(value, path, what: str) -> np.ndarray:
    """``value`` as an array of real numbers (floats or integers), its dtype kept; anything else is refused."""
    try:
        a = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged lists, ...
        raise Edit3DGSError(path, f"{what} as an array of numbers", f"{type(exc).__name__}: {str(exc)[:80]}") from None
    if a.dtype.kind not in REAL_KINDS:
        found = type(value).__name__ if a.dtype.kind == "O" and a.ndim == 0 else f"an array of dtype {a.dtype}"
        raise Edit3DGSError(path, f"{what} as an array of real numbers", found)
    return a


def float32_array(value, path, what: str) -> np.ndarray:
    """Real, finite numbers that float32 holds (1e300 is not one), as float32."""
    a = real_array(value, path, what)
    with np.errstate(over="ignore", invalid="ignore"):
        b = a.astype(np.float32)
    finite(b, path, what, "as float32 (at most 3.4e38)" if a.dtype.itemsize > 4 and a.dtype.kind == "f" else "")
    return b


def finite(a: np.ndarray, path, what: str, note: str = "") -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        raise Edit3DGSError(path, f"finite values in {what}" + (f" {note}" if note else ""), f"{int(bad.sum())} NaN/inf value(s)")


def index_array(value, path, what: str, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """Whole numbers in [lo, hi) as int64 (floats only when they are whole)."""
    a = real_array(value, path, what)
    if hi is None:
        hi = 1 << 53  # where float64 stops holding every whole number (and far inside int64)
    if a.dtype.kind == "f":
        finite(a, path, what)
        if (a != np.round(a)).any():
            raise Edit3DGSError(path, f"whole numbers in {what}", f"values such as {a[a != np.round(a)].flat[0]:g}")
    if a.size and (a.min() < lo or a.max() >= hi):
        raise Edit3DGSError(path, f"{what} in [{lo},{hi})", f"range [{a.min():g},{a.max():g}]")
    return a.astype(np.int64)


def whole(value, path, what: str, lo: int | None = 0, hi: int | None = None) -> int:
    """One whole number (an int, or a float without a fraction; never a bool) in [lo, hi]."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and value == int(value):
        value, ok = int(value), True
    rng = (f" in [{lo},{hi}]" if lo is not None and hi is not None else f" of at least {lo}" if lo is not None
           else f" of at most {hi}" if hi is not None else "")
    if not ok or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise Edit3DGSError(path, f"{what} as a whole number{rng}", repr(value)[:60])
    return int(value)


def positive(value, path, what: str) -> float:
    """One finite number above zero (never a bool or text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise Edit3DGSError(path, f"{what} as a positive number", repr(value)[:60])
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise Edit3DGSError(path, f"{what} as a finite positive number", repr(value)[:60])
    return v


def image_size(w, h, path, where: str = "") -> tuple[int, int]:
    """Image width and height: whole numbers from 1 to ``EDIT3DGS_MAX_IMAGE_SIDE``."""
    lim = limit("MAX_IMAGE_SIDE", 8192)
    sfx = f" ({where})" if where else ""
    w = whole(w, path, "the image width w" + sfx, 1)
    h = whole(h, path, "the image height h" + sfx, 1)
    if max(w, h) > lim:
        raise Edit3DGSError(path, f"images of at most {lim} pixels a side{sfx} {limit_note('MAX_IMAGE_SIDE')}", f"{w}x{h}")
    return w, h


# -- JSON ------------------------------------------------------------------------------------------------------------


def _no_constants(name):
    raise ValueError(f"{name} (not a JSON number)")


def read_json(path: os.PathLike | str, what: str):
    """A JSON file of at most ``EDIT3DGS_MAX_JSON_BYTES``, UTF-8, standard numbers (no NaN/Infinity)."""
    path = Path(path)
    if not path.is_file():
        raise Edit3DGSError(path, what, "no such file" if not path.exists() else "not a file")
    at_most(path, "bytes of JSON", path.stat().st_size, "MAX_JSON_BYTES", 128 << 20)
    try:
        return json.loads(path.read_bytes().decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise Edit3DGSError(path, "valid JSON", f"{type(exc).__name__}: {str(exc)[:120]}") from None


# -- npz -------------------------------------------------------------------------------------------------------------


def _npy_header(fh):
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    if version == (1, 0):
        return fmt.read_array_header_1_0(fh)
    if version == (2, 0):
        return fmt.read_array_header_2_0(fh)
    return fmt._read_array_header(fh, version)  # 3.0 (utf-8 field names): numpy has no public reader


def read_npz(path: os.PathLike | str, what: str, keys=None) -> dict:
    """The arrays of an .npz (only ``keys`` when given), each checked before it is read: a real zip
    archive, numeric arrays (no pickled objects), headers that ask for no more bytes than the archive
    says the member inflates to, and at most ``EDIT3DGS_MAX_NPZ_BYTES`` inflated in all."""
    path = Path(path)
    if not path.is_file():
        raise Edit3DGSError(path, what, "no such file" if not path.exists() else "not a file")
    broken = (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError, SyntaxError, NotImplementedError)
    try:
        zf = zipfile.ZipFile(path)
    except broken as exc:
        raise Edit3DGSError(path, f"{what} (an .npz zip archive)", f"{type(exc).__name__}: {str(exc)[:120]}") from None
    out = {}
    with zf:
        members = [i for i in zf.infolist() if i.filename.endswith(".npy") and (keys is None or i.filename[:-4] in keys)]
        at_most(path, "bytes of arrays (inflated)", sum(i.file_size for i in members), "MAX_NPZ_BYTES", 1 << 30)
        for info in members:
            name = info.filename[:-4]
            try:
                with zf.open(info) as fh:
                    shape, _, dtype = _npy_header(fh)
                    if dtype.hasobject or dtype.kind not in REAL_KINDS + "bcUSMm":
                        raise Edit3DGSError(path, f"'{name}' as an array of numbers", f"an array of dtype {dtype}")
                    nbytes = math.prod(shape) * dtype.itemsize
                    if nbytes > info.file_size:
                        raise Edit3DGSError(path, f"'{name}' no larger than the {info.file_size:,} bytes stored for it",
                                            f"a header asking for shape {shape} ({nbytes:,} bytes)")
                with zf.open(info) as fh:
                    out[name] = np.lib.format.read_array(fh, allow_pickle=False)
            except Edit3DGSError:
                raise
            except broken as exc:
                raise Edit3DGSError(path, f"{what} (a readable .npz; member '{name}')",
                                    f"{type(exc).__name__}: {str(exc)[:120]}") from None
    return out


def parse_int_list(text: str | None, what: str) -> list[int] | None:
    """'0,5,10' or '0-20:5' (start-stop:step, stop exclusive) -> list of ints.

    Validated, never reinterpreted: an empty list or item, a range that is empty or reversed, a
    step below 1, a negative number or text that is not a number is the one-line error.
    """
    if text is None:
        return None
    form = "a list like '0,4,8' or a range like '0-40:10' (start below stop, step 1 or more)"
    lim = limit("MAX_LIST_ITEMS", 100_000)
    out: list[int] = []
    for part in text.split(","):
        item = part.strip()
        try:
            rng, colon, step = item.partition(":")
            if "-" in rng:
                a, b = rng.split("-", 1)
                a, b, k = int(a), int(b), int(step) if colon else 1
                if min(a, b) < 0 or k < 1 or a >= b:
                    raise ValueError
                n = (b - a + k - 1) // k
            else:
                if colon:
                    raise ValueError
                v = int(rng)
                if v < 0:
                    raise ValueError
                a, b, k, n = v, v + 1, 1, 1
        except ValueError:
            where = "" if item == text.strip() else (" (an empty item)" if not item else f" (item {item!r})")
            raise Edit3DGSError(what, form, repr(text) + where) from None
        if len(out) + n > lim:  # counted before it is expanded: '0-10000000000' allocates nothing
            raise Edit3DGSError(what, f"at most {lim:,} items {limit_note('MAX_LIST_ITEMS')}",
                                f"{len(out) + n:,} in {text[:60]!r}")
        out += range(a, b, k)
    return out
