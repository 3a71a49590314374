"""Benchmark: peak memory of the KiTS23 convert stage for 6 and for 24 real label maps.

Usage: python benchmarks/convert_memory.py [--labels DIR] [--work DIR] [--sizes 6 24]
       [--hashes OUT.json] [--src SRC_DIR]

Builds KiTS23-layout source folders (``case_XXXXX/{imaging,segmentation}.nii.gz``) from the real
segmentations in ``--labels`` (default /work/shared/data/kits23_labels), each with a synthetic CT
image of the segmentation's geometry (int16, written once and cached in ``--work``). A set of
``n`` cases takes the first ``n`` segmentations in sorted order; beyond the 12 real ones, every
case is listed again under a new id (``case_1XXXX``, symbolic links to the same files). The
first 6 cases include the largest one (case_00271, 512x512x468).

For every size, one child process runs the convert stage as the pipeline does
(``nnrobustloss convert --configfile config/paper.yaml <overlay> --task KiTS23``: boundary noise
calibrated to a mean Dice of 0.96, seed 0). Its peak RSS comes from ``os.wait4`` (the child's
own rusage). The table gives cases, voxels, wall time, peak RSS and a digest of all noisy label
files; ``--hashes`` writes the sha256 of every noisy label file per size (to compare two
implementations). The output is committed as benchmarks/results/convert_memory.txt.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LABELS = Path("/work/shared/data/kits23_labels")


def synthetic_ct(seg_path: Path, out: Path) -> None:
    """Write :func:`nnrobustloss.datasets.synthetic_ct.synthetic_ct_for_labels` of ``seg_path``."""
    from nnrobustloss.datasets.synthetic_ct import synthetic_ct_for_labels

    img = synthetic_ct_for_labels(sitk.ReadImage(str(seg_path)))
    sitk.WriteImage(img, str(out), useCompression=True)


def source_folder(labels: Path, work: Path, n: int) -> Path:
    """A KiTS23-layout folder with ``n`` cases (see the module docstring)."""
    real = sorted(p.parent for p in labels.glob("case_*/segmentation.nii.gz"))
    cache = work / "images"
    cache.mkdir(parents=True, exist_ok=True)
    src = work / f"kits23_{n}"
    src.mkdir(exist_ok=True)
    for i in range(n):
        case = real[i % len(real)]
        ct = cache / f"{case.name}.nii.gz"
        if not ct.is_file():
            print(f"synthetic CT for {case.name}", file=sys.stderr, flush=True)
            synthetic_ct(case / "segmentation.nii.gz", ct)
        repeat = i // len(real)
        name = case.name if repeat == 0 else f"case_{repeat}{case.name[len('case_'):][1:]}"
        d = src / name
        d.mkdir(exist_ok=True)
        for link, target in (("imaging.nii.gz", ct), ("segmentation.nii.gz",
                                                       case / "segmentation.nii.gz")):
            if not (d / link).is_symlink():
                (d / link).symlink_to(target)
    return src


def run_convert(src: Path, results: Path, package: Path) -> tuple[float, int, int]:
    """Run the convert stage in a child importing ``package`` (a src/ folder):
    (wall s, peak RSS kB, exit status)."""
    overlay = results.parent / f"{results.name}.yaml"
    overlay.write_text(json.dumps({"tasks": {"KiTS23": {"sources": [
        {"type": "kits23", "path": str(src)}]}}}))
    env = dict(os.environ, PYTHONPATH=str(package))
    cmd = [sys.executable, "-m", "nnrobustloss.cli", "convert", "--configfile",
           str(REPO / "config" / "paper.yaml"), str(overlay), "--task", "KiTS23",
           "--results-dir", str(results)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t0, int(usage.ru_maxrss), proc.returncode


def label_hashes(results: Path) -> dict[str, str]:
    """sha256 of every noisy label file of the converted KiTS23 dataset."""
    folder = next((results / "raw").glob("Dataset621_KiTS23")) / "labelsTr"
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.glob("*.nii.gz"))}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", type=Path, default=DEFAULT_LABELS)
    ap.add_argument("--work", type=Path, default=Path("/tmp/convert_memory"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[6, 24])
    ap.add_argument("--hashes", type=Path)
    ap.add_argument("--src", type=Path, default=REPO / "src",
                    help="the package's src/ folder to run (default: this checkout's)")
    args = ap.parse_args(argv)

    rows, hashes = [], {}
    for n in args.sizes:
        src = source_folder(args.labels, args.work, n)
        results = args.work / f"results_{n}"
        subprocess.run(["rm", "-rf", str(results)], check=True)
        wall, rss_kb, rc = run_convert(src, results, args.src)
        if rc != 0:
            print(f"convert of {n} cases failed (exit status {rc})", file=sys.stderr)
            return 1
        h = label_hashes(results)
        hashes[str(n)] = h
        digest = hashlib.sha256("".join(h[k] for k in sorted(h)).encode()).hexdigest()[:16]
        voxels = sum(int(np.prod(sitk.ReadImage(str(d / "segmentation.nii.gz")).GetSize()))
                     for d in sorted(src.glob("case_*")))
        rows.append((n, voxels, wall, rss_kb, digest))
    if args.hashes:
        args.hashes.write_text(json.dumps(hashes, indent=1) + "\n")

    print(f"KiTS23 convert stage (nnrobustloss convert, config/paper.yaml, target Dice 0.96, "
          f"seed 0), real label maps from {args.labels} with synthetic CT images")
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, "
          f"{os.cpu_count()} cores (shared with other jobs)")
    print()
    head = f"{'cases':>5} {'voxels (M)':>10} {'wall s':>7} {'peak RSS MB':>11}  noisy labels sha256"
    print(head)
    print("-" * len(head))
    for n, voxels, wall, rss_kb, digest in rows:
        print(f"{n:5d} {voxels / 1e6:10.0f} {wall:7.1f} {rss_kb / 1024:11.0f}  {digest}")
    if len(rows) > 1:
        print(f"peak RSS ratio {rows[-1][0]} / {rows[0][0]} cases: {rows[-1][3] / rows[0][3]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
