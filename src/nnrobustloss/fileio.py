"""Atomic file output, checked image input, stage locks and whole-stage commits.

Every stage writes its outputs to a temporary name in the destination folder and renames it
when complete, so that a killed job never leaves a half-written file or folder behind that a
later run would mistake for a result. Written images are verified before the rename (a full
disk or a file size limit is not reported by SimpleITK). A stage with several outputs builds
them as one version and switches a single symbolic link (:func:`versioned_outputs`), so a kill
shows either the old complete state or the new one. :func:`stage_lock` lets only one process
run a stage of a task at a time.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import gzip
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from nnrobustloss.errors import InputDataError, OutputError, StageLockedError, user_error


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


def _shadowing_sibling(path: Path) -> Path | None:
    """The other spelling of a NIfTI file (``X.nii`` for ``X.nii.gz`` and back) when it exists.

    SimpleITK (nifticlib) opens ``X.nii`` when asked for ``X.nii.gz`` if both exist, so a stale
    uncompressed copy silently shadows the named file."""
    name = path.name
    if name.endswith(".nii.gz"):
        other = path.with_name(name[: -len(".gz")])
    elif name.endswith(".nii"):
        other = path.with_name(name + ".gz")
    else:
        return None
    return other if os.path.lexists(other) else None


def read_image(path: str | os.PathLike[str]) -> sitk.Image:
    """Read a medical image with SimpleITK; a missing or unreadable file raises InputDataError.

    Exactly the named file is read: a folder holding both ``X.nii`` and ``X.nii.gz`` is refused
    (SimpleITK would open the other one). NIfTI files are also checked for what SimpleITK's NIfTI
    reader silently hides (see :func:`nifti_problem`): a file holding fewer bytes than its header
    announces and NaN or infinite voxel values.
    """
    p = Path(path)
    if not p.is_file():
        why = ("a dangling symbolic link" if p.is_symlink() and not p.exists() else "file not found")
        raise InputDataError(f"{p}: {why}. Check the source path in the config.")
    other = _shadowing_sibling(p)
    if other is not None:
        raise InputDataError(f"{p}: the folder also holds {other.name}, which SimpleITK would read "
                             "instead. Keep only one of the two files.")
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


def _decompressed_size(path: Path) -> tuple[int, str | None]:
    """Decompress a gzip file to its end: (bytes obtained, why it fails or None when complete)."""
    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as e:
        return total, (str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    return total, None


def nifti_size_problem(path: str | os.PathLike[str]) -> str | None:
    """Describe how a NIfTI file's data falls short of what its header announces, or None.

    The header gives the data offset, shape and type, hence the exact byte count. For
    ``.nii.gz`` the gzip trailer's size field is compared first (a sound file costs a header
    read); only when it disagrees is the file decompressed to count its bytes, which catches a
    cut-off stream as well as a complete stream of too few bytes (a truncated file re-gzipped).
    Files nibabel cannot parse give None (left to SimpleITK).
    """
    import nibabel as nib

    p = Path(path)
    try:
        proxy = nib.load(str(p)).dataobj
        expected = int(proxy.offset) + int(np.prod(proxy.shape)) * np.dtype(proxy.dtype).itemsize
    except Exception:  # not parseable by nibabel: SimpleITK's own reading is all we have
        return None
    if p.name.endswith(".gz"):
        with p.open("rb") as f:
            f.seek(-4, os.SEEK_END)
            isize = int.from_bytes(f.read(4), "little")  # uncompressed size mod 2**32
        if isize == expected % 2**32:
            return None
        size, err = _decompressed_size(p)
        if err:
            return (f"the compressed data is truncated or corrupt ({err}); it would be read "
                    "with zeros in place of the missing voxels. Replace it with a complete copy.")
    else:
        size = p.stat().st_size
    if size < expected:
        return (f"the file is truncated ({size} of the {expected} bytes its header announces); "
                "it would be read with zeros in place of the missing voxels. Replace it with a "
                "complete copy.")
    return None


def nifti_problem(path: str | os.PathLike[str]) -> str | None:
    """Describe what SimpleITK would read wrongly from a NIfTI file, or None when it is sound.

    SimpleITK (nifticlib) reads a truncated file, compressed or not, without an error, filling
    the missing voxels with 0, and replaces NaN and infinite float voxels by 0. This checks the
    bytes against the header (:func:`nifti_size_problem`) for every data type, and scans float
    data for non-finite values (one extra read of float images). Files nibabel cannot parse are
    left to SimpleITK.
    """
    import nibabel as nib

    p = Path(path)
    problem = nifti_size_problem(p)
    if problem:
        return problem
    try:
        proxy = nib.load(str(p)).dataobj
        if np.dtype(proxy.dtype).kind not in "fc":
            return None
        data = np.asarray(proxy.get_unscaled())
    except Exception:  # not parseable by nibabel: SimpleITK's own reading is all we have
        return None
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        return (f"{bad} NaN or infinite values (they would be read as 0). Replace them "
                "(for example with the background value) before conversion.")
    return None


def write_image(image: sitk.Image, path: str | os.PathLike[str]) -> None:
    """Atomically write a SimpleITK image (compressed when the extension asks for it).

    The written file is checked before it is renamed into place: SimpleITK does not report a
    short write (a full disk, a file size limit), so a NIfTI file must hold every byte its header
    announces, any other file must be readable again. Raises :class:`OutputError` naming
    ``path``; nothing is left behind then.
    """
    final = Path(path)
    with atomic_path(final) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=True)
        except RuntimeError as e:
            raise OutputError(f"{final}: cannot be written ({str(e).strip().splitlines()[-1]}); "
                              "check free space and permissions, then rerun.") from e
        verify_written_image(tmp, final)


def verify_written_image(path: str | os.PathLike[str],
                         shown: str | os.PathLike[str] | None = None) -> None:
    """OutputError naming ``shown`` (default ``path``) unless image file ``path`` was written
    completely: a NIfTI file holds every byte its header announces, any other image reads back.
    For writers that do not report a short write (SimpleITK, nnU-Net's exporters)."""
    p = Path(path)
    if p.name.endswith((".nii", ".nii.gz")):
        problem = nifti_size_problem(p) if p.is_file() else "the file was not created"
        if problem is None:  # a header cut short is not parsed by nifti_size_problem
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(p))
            try:
                reader.ReadImageInformation()
            except RuntimeError:
                problem = "its header cannot be read back"
    else:
        try:
            sitk.ReadImage(str(p))
            problem = None
        except RuntimeError:
            problem = "it cannot be read back"
    if problem:
        written = p.stat().st_size if p.is_file() else 0
        raise OutputError(f"{shown or p}: writing stopped short ({written} bytes written, the "
                          "file is incomplete): the disk is full or a file size limit (ulimit -f) "
                          "was hit. Free space or raise the limit, then rerun.")


def write_torch(obj: Any, path: str | os.PathLike[str]) -> None:
    """Atomically ``torch.save`` ``obj`` to ``path``; the file is renamed into place only when
    its zip directory reads back (complete).

    ``torch.save`` reports a full disk or a file size limit as a C++ RuntimeError; writing
    through a Python file object keeps the ``OSError`` behind it, which becomes the same one
    line as every other stage's (:func:`nnrobustloss.errors.user_error`). Raises
    :class:`OutputError` naming ``path``; nothing is left behind then.
    """
    import zipfile

    import torch

    final = Path(path)
    with atomic_path(final) as tmp:
        try:
            with open(tmp, "wb") as fh:
                torch.save(obj, fh)
        except (OSError, RuntimeError) as e:
            cause = e if isinstance(e, OSError) else e.__context__
            if isinstance(cause, OSError):
                raise user_error(OSError(cause.errno, cause.strerror, str(final))) from e
            raise OutputError(f"{final}: cannot be written ({str(e).strip().splitlines()[0]}); "
                              "check free space and permissions, then rerun.") from e
        try:
            with zipfile.ZipFile(tmp) as z:
                complete = bool(z.namelist())
        except (zipfile.BadZipFile, OSError):
            complete = False
        if not complete:
            raise OutputError(f"{final}: writing stopped short ({tmp.stat().st_size} bytes "
                              "written, the file is incomplete): the disk is full or a file "
                              "size limit (ulimit -f) was hit. Free space or raise the limit, "
                              "then rerun.")


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


# --- one process per stage and task ---------------------------------------------------------

def _holder(fd: int) -> str:
    """What the holder of a lock file wrote into it (or a note that it has not yet)."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "a process that is just starting"


LOCK_POLL_S = 2.0
"""Seconds between two attempts of a waiting :func:`stage_lock`."""


@contextlib.contextmanager
def stage_lock(lock_file: str | os.PathLike[str], what: str,
               wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` for the block, or raise :class:`StageLockedError`.

    ``what`` names the locked work (e.g. ``"convert of task Phantom"``). The holder writes its
    process id, host, start time and command line into the file, and the error of a second
    process quotes them. The lock is an ``flock`` (released by the kernel when the holder dies,
    so a killed run never blocks the next one; NFS clients map it to a POSIX lock); the file is
    removed when the block ends. ``wait``: instead of raising, print one line naming the holder
    to stderr and wait (polling every :data:`LOCK_POLL_S` s) until the lock is free.
    """
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    said = False
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            if not wait:
                raise StageLockedError(
                    f"{lock_file}: the {what} is already running ({holder}). Wait for it to "
                    "finish or stop that process, then rerun.") from None
            if not said:
                print(f"{lock_file}: the {what} is already running ({holder}); waiting for it "
                      "to finish.", file=sys.stderr, flush=True)
                said = True
            time.sleep(LOCK_POLL_S)
            continue
        try:  # the previous holder may have removed the file between our open and flock
            same = os.stat(lock_file).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.ftruncate(fd, 0)
        os.pwrite(fd, (f"pid {os.getpid()} on {socket.gethostname()} since {since}: "
                       f"{' '.join(sys.argv) or sys.executable}\n").encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_file)
        os.close(fd)


# --- several outputs committed as a whole ----------------------------------------------------

CURRENT = "current"
_STAGING, _VERSION = ".tmp-", "v-"


def _link_target(link: Path, store: Path, name: str) -> str:
    """The relative target of ``link``: ``<store>/current/<name>`` seen from the link's folder."""
    return os.path.relpath(store.resolve() / CURRENT / name, link.parent.resolve())


def _earlier_conversion(path: Path) -> bool:
    """Whether a real folder at a link's place is a stage output written before outputs were
    versioned: an nnU-Net raw dataset whose ``dataset.json`` this package wrote, or a folder of
    label files only (``reference/<Task>``)."""
    if path.is_symlink() or not path.is_dir():
        return False
    names = {p.name for p in path.iterdir()} - {".snakemake_timestamp"}
    if "dataset.json" in names and names <= {"dataset.json", "imagesTr", "labelsTr"}:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            desc = json.loads((path / "dataset.json").read_text(encoding="utf-8")).get("description")
            return str(desc).startswith("nnRobustLoss task")
        return False
    return bool(names) and all(n.endswith(".nii.gz") for n in names)


def _check_links(store: Path, links: Mapping[Path, str]) -> list[Path]:
    """Refuse any link path taken by something this stage did not write; return the folders of
    earlier, unversioned conversions that the commit replaces."""
    earlier = []
    for link, name in links.items():
        for parent in reversed(link.parents):
            if os.path.lexists(parent) and not parent.is_dir():
                raise OutputError(f"{parent}: exists as a file where a folder is needed for "
                                  f"{link}. Move it away (or choose another results_dir), then "
                                  "rerun.")
        if link.is_symlink():
            target = os.readlink(link)
            if target != _link_target(link, store, name):
                raise OutputError(
                    f"{link}: exists as a symbolic link to {target}, which this stage did not "
                    "write. Move it away (or choose another dataset id / results_dir), then rerun.")
        elif _earlier_conversion(link):
            earlier.append(link)
        elif os.path.lexists(link):
            kind = "folder" if link.is_dir() else "file"
            raise OutputError(f"{link}: exists as a {kind} that this stage did not write. Move it "
                              "away (or choose another dataset id / results_dir), then rerun.")
    return earlier


def _remove_entry(entry: Path) -> None:
    """Delete a file, a symbolic link or a folder tree (whatever ``entry`` is)."""
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def remove_temporaries(folder: str | os.PathLike[str], name: str | None) -> list[Path]:
    """Delete the temporary files and folders that killed writers of ``folder/name`` left there.

    Matches exactly the names this module and the planner give them (``.tmp-<pid>-<name>-<8>``
    of :func:`atomic_dir`, ``.tmp-<pid>-<8>-<name>`` of :func:`atomic_path`, ``.tmp-<pid>-<n>-
    link-<name>`` of a link switch), so other outputs' temporaries are never touched; ``name``
    None matches every output's (for a folder that one job owns alone: a training's or a
    trial's). Call it only while holding the stage's lock (:func:`stage_lock`) or owning the
    folder. Returns what was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    n = r"[^/]+" if name is None else re.escape(name)
    mine = re.compile(rf"\.tmp-\d+-(?:{n}-[A-Za-z0-9_]{{8}}|[A-Za-z0-9_]{{8}}-{n}|\d+-link-{n})")
    removed = [e for e in folder.iterdir() if mine.fullmatch(e.name)]
    for entry in removed:
        _remove_entry(entry)
    return removed


def _remove_leftovers(store: Path, links: Mapping[Path, str]) -> None:
    """Delete what killed runs left: staging folders and versions that ``current`` does not name
    in ``store``, and temporaries beside the links (:func:`remove_temporaries`)."""
    current = os.readlink(store / CURRENT) if (store / CURRENT).is_symlink() else None
    for entry in store.iterdir():
        if entry.name.startswith((_STAGING, _VERSION)) and entry.name != current:
            _remove_entry(entry)
    for link in links:
        remove_temporaries(link.parent, link.name)


def link_relative(link: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Make ``link`` a symbolic link to the file or folder ``target`` by a relative path (so
    the results folder can move; links on the way are kept, not resolved), replacing an
    existing link atomically; parents are created. Returns ``link``. OutputError when
    something other than a link is at ``link``."""
    link = Path(link)
    if os.path.lexists(link) and not link.is_symlink():
        raise OutputError(f"{link}: exists and is not a symbolic link; this stage only writes "
                          "links there. Move it away, then rerun.")
    link.parent.mkdir(parents=True, exist_ok=True)
    # abspath, not resolve: a link to preprocessed/<dataset>/... follows that versioned link
    _replace_symlink(link, os.path.relpath(os.path.abspath(target), os.path.abspath(link.parent)))
    return link


def _replace_symlink(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` atomically (a new link renamed over the old one)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".tmp-{os.getpid()}-{time.time_ns()}-link-{link.name}")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def versioned_outputs(store: str | os.PathLike[str], links: Mapping[str | os.PathLike[str], str],
                      what: str) -> Iterator[Path]:
    """Build a stage's several outputs as one version and commit them as a whole.

    ``store`` is the stage's folder of versions (one per task and stage); ``links`` maps each
    output path that readers use to the name of its file or folder inside a version. The block
    gets an empty staging folder in ``store`` and writes every output there under its name. On
    success the staging folder becomes a version, each output path becomes (if it is not yet) a
    relative symbolic link to ``<store>/current/<name>``, and then ``<store>/current`` is
    switched to the new version by one atomic rename, the only moment readers see a change: a
    kill at any point leaves the old complete state or the new one. Older versions are deleted
    afterwards. On error the staging folder is deleted and nothing visible changes.

    The whole call holds :func:`stage_lock` on ``<store>/lock`` (``what`` names the work in its
    error). Before anything is written, an output path taken by something else (a file, a folder
    or a symbolic link elsewhere) raises :class:`OutputError`; folders of an earlier unversioned
    conversion are replaced. Leftovers of killed runs (staging folders, uncommitted versions) are
    removed first.
    """
    store = Path(store)
    paths = {Path(k): v for k, v in links.items()}
    created = not store.exists()
    store.mkdir(parents=True, exist_ok=True)
    committed = False
    try:
        with stage_lock(store / "lock", what):
            earlier = _check_links(store, paths)
            _remove_leftovers(store, paths)
            staging = Path(tempfile.mkdtemp(prefix=_STAGING, dir=store))
            umask = os.umask(0)
            os.umask(umask)
            staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would hide the outputs from the group
            try:
                yield staging
                version = store / f"{_VERSION}{time.time_ns()}-{os.getpid()}"
                os.rename(staging, version)
                for link in earlier:  # one-time migration; the versioned links replace them
                    os.rename(link, store / f"{_STAGING}earlier-{time.time_ns()}-{link.name}")
                for link, name in paths.items():
                    _replace_symlink(link, _link_target(link, store, name))
                _replace_symlink(store / CURRENT, version.name)  # the commit
                committed = True
                _remove_leftovers(store, paths)
            finally:
                if staging.exists():
                    shutil.rmtree(staging, ignore_errors=True)
    finally:
        if created and not committed and not (store / CURRENT).is_symlink():
            with contextlib.suppress(OSError):  # leave nothing behind a first run that failed
                shutil.rmtree(store)
                store.parent.rmdir()
