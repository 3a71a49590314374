"""Atomic file output and checked image input.

Every stage writes its outputs to a temporary name in the destination folder and renames it
when complete, so that a killed job never leaves a half-written file or folder behind that a
later run would mistake for a result.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from nnrobustloss.errors import InputDataError


def _tmp_sibling(path: Path, suffix_keep: bool = True) -> Path:
    """Return a unique temporary path in ``path``'s folder that keeps its full suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.getpid()}-", suffix=f"-{name}" if suffix_keep else "",
                               dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path; on success rename it to ``path``, on error delete it.

    The temporary name ends with the final file name, so format detection by extension
    (``.nii.gz``, ``.csv``, ``.png``) works on it.
    """
    final = Path(path)
    tmp = _tmp_sibling(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces ``path`` (removed first if present).

    On error the temporary folder is removed and an existing ``path`` is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``, creating parent folders."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON to ``path``."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, raising :class:`InputDataError` naming the file when missing or invalid."""
    p = Path(path)
    if not p.is_file():
        raise InputDataError(f"{p}: file not found. Run the stage that writes it first.")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputDataError(f"{p}: not valid JSON ({e}). Delete it and rerun its stage.") from e


def read_image(path: str | os.PathLike[str]) -> sitk.Image:
    """Read a medical image with SimpleITK; a missing or unreadable file raises InputDataError.

    NIfTI files are also checked for what SimpleITK's NIfTI reader silently hides (see
    :func:`nifti_problem`): a truncated file and NaN or infinite voxel values.
    """
    p = Path(path)
    if not p.is_file():
        raise InputDataError(f"{p}: file not found. Check the source path in the config.")
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown reason"
        raise InputDataError(f"{p}: cannot be read as an image ({first}). "
                             "Replace the file with a valid NIfTI/NRRD/MHA image.") from e
    if p.name.endswith((".nii", ".nii.gz")):
        problem = nifti_problem(p)
        if problem:
            raise InputDataError(f"{p}: {problem}")
    return image


def _gzip_stream_error(path: Path) -> str | None:
    """Decompress a gzip file to its end; return why it fails, or None when it is complete."""
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    except (OSError, EOFError, zlib.error) as e:
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return None


def nifti_problem(path: str | os.PathLike[str]) -> str | None:
    """Describe what SimpleITK would read wrongly from a NIfTI file, or None when it is sound.

    SimpleITK (nifticlib) reads a truncated file, compressed or not, without an error, filling
    the missing voxels with 0, and replaces NaN and infinite float voxels by 0. This checks the
    file size against the header (for ``.nii.gz`` the gzip trailer's size field, with a full
    decompression only when it disagrees, so a sound file costs a header read) and scans float
    data for non-finite values (one extra read of float images). Files nibabel cannot parse are
    left to SimpleITK.
    """
    import nibabel as nib

    p = Path(path)
    try:
        proxy = nib.load(str(p)).dataobj
        dtype = np.dtype(proxy.dtype)
        expected = int(proxy.offset) + int(np.prod(proxy.shape)) * dtype.itemsize
    except Exception:  # not parseable by nibabel: SimpleITK's own reading is all we have
        return None
    if p.name.endswith(".gz"):
        with p.open("rb") as f:
            f.seek(-4, os.SEEK_END)
            isize = int.from_bytes(f.read(4), "little")  # uncompressed size mod 2**32
        if isize != expected % 2**32:
            err = _gzip_stream_error(p)
            if err:
                return (f"the compressed data is truncated or corrupt ({err}); it would be read "
                        "with zeros in place of the missing voxels. Replace it with a complete copy.")
    elif p.stat().st_size < expected:
        return (f"the file is truncated ({p.stat().st_size} of {expected} bytes); it would be "
                "read with zeros in place of the missing voxels. Replace it with a complete copy.")
    if dtype.kind in "fc":
        data = np.asarray(proxy.get_unscaled())
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            return (f"{bad} NaN or infinite values (they would be read as 0). Replace them "
                    "(for example with the background value) before conversion.")
    return None


def write_image(image: sitk.Image, path: str | os.PathLike[str]) -> None:
    """Atomically write a SimpleITK image (compressed when the extension asks for it)."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def array_to_image(array: np.ndarray, like: sitk.Image | None = None,
                   spacing_zyx: tuple[float, ...] | None = None) -> sitk.Image:
    """Wrap a (z, y, x) array as an image, copying geometry from ``like`` or using ``spacing_zyx``."""
    img = sitk.GetImageFromArray(array)
    if like is not None:
        img.CopyInformation(like)
    elif spacing_zyx is not None:
        img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    return img


def geometry_mismatch(a: sitk.Image, b: sitk.Image, tol: float = 1e-4, *,
                      rtol: float | None = None, origin_atol: float | None = None) -> str | None:
    """Describe how two images' grids differ (size, spacing, origin, direction), or None if equal.

    Spacing is compared with relative tolerance ``rtol`` (default ``tol``) and absolute ``tol``,
    direction with absolute ``tol``, origins in mm with absolute ``origin_atol`` (default
    ``max(tol, 1e-3)``, which absorbs float32 header round-off).
    """
    rtol = tol if rtol is None else rtol
    origin_atol = max(tol, 1e-3) if origin_atol is None else origin_atol
    if a.GetSize() != b.GetSize():
        return f"size {a.GetSize()} vs {b.GetSize()}"
    if not np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=rtol, atol=tol):
        return f"spacing {a.GetSpacing()} vs {b.GetSpacing()}"
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=origin_atol):
        return f"origin {a.GetOrigin()} vs {b.GetOrigin()}"
    if not np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=tol):
        return f"direction {a.GetDirection()} vs {b.GetDirection()}"
    return None
