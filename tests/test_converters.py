"""Tests of the data sources and the raw-dataset writer on small files written by the tests.

Covers the KiTS23, MM-WHS and folder sources, a task combining MM-WHS and a folder source, the
written nnU-Net raw layout of the noisy/reference twins, boundary noise through the writer, and
the convert stage function of the pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnrobustloss.datasets.convert import convert_task, source_cases
from nnrobustloss.datasets.raw import dataset_name, make_dataset_json, write_raw_datasets
from nnrobustloss.datasets.sources import (
    folder_source,
    kits23_source,
    mmwhs_source,
    remap_labels,
)
from nnrobustloss.errors import InputDataError
from nnrobustloss.fileio import geometry_mismatch
from nnrobustloss.noise import DICE_TOLERANCE, dice_per_case
from nnrobustloss.pipeline import run_convert

SHAPE = (8, 20, 24)  # (z, y, x)
SPACING = (2.5, 0.8, 0.9)  # mm (z, y, x)
ORIGIN = (-10.0, 4.5, 30.0)  # mm (x, y, z), SimpleITK order
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # a rotation about z
HEART_LABELS = {"background": 0, "LV": 1, "RV": 2, "LA": 3, "RA": 4, "Myo": 5}
KITS_LABELS = {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}


# --- helpers -------------------------------------------------------------------------------

def to_image(arr: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=DIRECTION) -> sitk.Image:
    """A SimpleITK image of a (z, y, x) array with the given geometry (spacing in z, y, x)."""
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def save(arr: np.ndarray, path: Path, **geometry) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(to_image(arr, **geometry), str(path), useCompression=True)
    return path


def intensity(seed: int, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(100.0, 20.0, shape).astype(np.float32)


def ellipsoid(shape, spacing, centre, radii) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij",
                       sparse=True)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def kits_labels(seed: int, shape=(12, 32, 32), spacing=(2.0, 0.8, 0.8)) -> np.ndarray:
    """Kidney (1) with a tumour (2) and a cyst (3) inside it."""
    rng = np.random.default_rng(seed)
    extent = np.array(shape) * np.array(spacing)
    c = extent / 2 + rng.uniform(-1, 1, 3)
    r = np.array([8.0, 9.0, 9.0]) * rng.uniform(0.9, 1.1, 3)
    lab = np.zeros(shape, np.uint8)
    lab[ellipsoid(shape, spacing, c, r)] = 1
    lab[ellipsoid(shape, spacing, c + [0, 0.45 * r[1], 0], 0.45 * r) & (lab == 1)] = 2
    lab[ellipsoid(shape, spacing, c - [0, 0.45 * r[1], 0], 0.3 * r) & (lab == 1)] = 3
    return lab


def heart_labels(seed: int, values=(500, 600, 420, 550, 205, 820, 850)) -> np.ndarray:
    """Slabs of the given label values along x on a background, shuffled per seed."""
    lab = np.zeros(SHAPE, np.int16)
    vals = list(values)
    np.random.default_rng(seed).shuffle(vals)
    for i, v in enumerate(vals):
        lab[1:-1, 2:-2, 1 + 3 * i: 3 + 3 * i] = v
    return lab


def make_kits(root: Path, n_cases: int = 4) -> list[np.ndarray]:
    labels = []
    for i in range(n_cases):
        lab = kits_labels(i)
        d = root / f"case_{i:05d}"
        save(intensity(i, lab.shape), d / "imaging.nii.gz", spacing=(2.0, 0.8, 0.8))
        save(lab, d / "segmentation.nii.gz", spacing=(2.0, 0.8, 0.8))
        labels.append(lab)
    return labels


def make_mmwhs(root: Path, ids=(1001, 1002)) -> dict[str, np.ndarray]:
    out = {}
    for k, i in enumerate(ids):
        save(intensity(k), root / f"ct_train_{i}_image.nii.gz")
        lab = heart_labels(k)
        save(lab, root / f"ct_train_{i}_label.nii.gz")
        out[f"ct_train_{i}"] = lab
    return out


def make_folder(root: Path, cases=("a", "b"), suffix0000: bool = False,
                ref_values=(1, 2), noisy_values=(1, 3)) -> dict[str, tuple[np.ndarray, ...]]:
    """Folder source; the noisy and reference labels use different slabs and values."""
    out = {}
    for k, case in enumerate(cases):
        img = intensity(10 + k)
        name = f"{case}_0000.nii.gz" if suffix0000 else f"{case}.nii.gz"
        save(img, root / "images" / name)
        ref = np.zeros(SHAPE, np.int16)
        ref[2:6, 3:12, 4:10] = ref_values[0]
        ref[2:6, 12:17, 4:10] = ref_values[1]
        noisy = np.zeros(SHAPE, np.int16)
        noisy[2:7, 3:11, 4:12] = noisy_values[0]
        noisy[2:7, 11:17, 4:12] = noisy_values[1]
        save(ref, root / "labels_reference" / f"{case}.nii.gz")
        save(noisy, root / "labels_noisy" / f"{case}.nii.gz")
        out[case] = (img, ref, noisy)
    return out


def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def assert_geometry(img: sitk.Image, spacing=SPACING, origin=ORIGIN, direction=DIRECTION) -> None:
    np.testing.assert_allclose(img.GetSpacing(), spacing[::-1], rtol=1e-6)
    np.testing.assert_allclose(img.GetOrigin(), origin, atol=1e-5)
    np.testing.assert_allclose(img.GetDirection(), direction, atol=1e-6)


# --- KiTS23 --------------------------------------------------------------------------------

def test_kits23_source_lists_and_loads_cases(tmp_path: Path) -> None:
    labels = make_kits(tmp_path / "dataset", n_cases=3)
    (tmp_path / "dataset" / "kits.json").write_text("[]")  # files beside the cases are ignored
    (tmp_path / "dataset" / "notes").mkdir()  # and folders not named case_*
    cases = kits23_source(tmp_path / "dataset", case_prefix="k_")
    assert [c.case_id for c in cases] == ["k_case_00000", "k_case_00001", "k_case_00002"]
    data = cases[1].load()
    assert data.noisy is None  # derived later by boundary noise
    np.testing.assert_array_equal(sitk.GetArrayFromImage(data.reference), labels[1])
    assert data.files["image"].endswith("case_00001/imaging.nii.gz")
    assert data.files["reference"].endswith("case_00001/segmentation.nii.gz")


@pytest.mark.parametrize("target", [0.9, 0.95])
def test_kits23_task_boundary_noise(tmp_path: Path, target: float) -> None:
    labels = make_kits(tmp_path / "dataset", n_cases=4)
    task_cfg = {"dataset_id": 601, "reference_dataset_id": 602, "labels": KITS_LABELS,
                "channel": "CT", "noise": {"type": "boundary", "target_dice": target},
                "sources": [{"type": "kits23", "path": str(tmp_path / "dataset")}]}
    raw = convert_task("KiTS", task_cfg, tmp_path / "results", seed=3)
    assert raw.case_ids == tuple(f"case_{i:05d}" for i in range(4))
    dices = []
    for i, case in enumerate(raw.case_ids):
        noisy = read(raw.noisy / "labelsTr" / f"{case}.nii.gz")
        ref = read(raw.reference / "labelsTr" / f"{case}.nii.gz")
        np.testing.assert_array_equal(ref, labels[i])  # the reference twin keeps the labels
        assert noisy.shape == ref.shape and noisy.dtype == np.uint8
        # No label value appears or disappears (erosions never erase a structure).
        assert set(np.unique(noisy)) == set(np.unique(ref))
        dices.append(dice_per_case(noisy, ref))
    assert any(d < 1.0 for d in dices)
    # corrupt_dataset guarantees the mean within DICE_TOLERANCE (it raises otherwise).
    assert abs(np.mean(dices) - target) <= DICE_TOLERANCE + 1e-9
    ds = json.loads((raw.noisy / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "CT"} and ds["labels"] == KITS_LABELS


SHARED_KITS = Path(__file__).resolve().parents[2] / "shared" / "data" / "kits23_labels"


def test_kits23_task_on_real_labels(tmp_path: Path) -> None:
    """Two real KiTS23 segmentations (full CT geometry) with synthetic CT images."""
    if not SHARED_KITS.is_dir():
        pytest.skip(f"{SHARED_KITS} not found (the shared KiTS23 labels are not available)")
    cases = ("case_00021", "case_00402")  # the two smallest volumes (38 and 49 slices)
    refs = {}
    for case in cases:
        seg = sitk.ReadImage(str(SHARED_KITS / case / "segmentation.nii.gz"))
        d = tmp_path / "dataset" / case
        d.mkdir(parents=True)
        (d / "segmentation.nii.gz").symlink_to(SHARED_KITS / case / "segmentation.nii.gz")
        arr = sitk.GetArrayFromImage(seg)
        img = sitk.GetImageFromArray(arr.astype(np.int16) * 40 - 1000)  # HU-like
        img.CopyInformation(seg)
        sitk.WriteImage(img, str(d / "imaging.nii.gz"), useCompression=True)
        refs[case] = (arr, seg)
    task_cfg = {"dataset_id": 631, "reference_dataset_id": 632, "labels": KITS_LABELS,
                "channel": "CT", "noise": {"type": "boundary", "target_dice": 0.96},
                "sources": [{"type": "kits23", "path": str(tmp_path / "dataset")}]}
    raw = convert_task("KiTS23", task_cfg, tmp_path / "results", seed=0)
    dices = []
    for case in cases:
        arr, seg = refs[case]
        noisy_img = sitk.ReadImage(str(raw.noisy / "labelsTr" / f"{case}.nii.gz"))
        assert geometry_mismatch(noisy_img, seg) is None
        np.testing.assert_array_equal(read(raw.reference_labels / f"{case}.nii.gz"), arr)
        noisy = sitk.GetArrayFromImage(noisy_img)
        assert set(np.unique(noisy)) == set(np.unique(arr))
        dices.append(dice_per_case(noisy, arr))
    assert abs(np.mean(dices) - 0.96) <= DICE_TOLERANCE + 1e-9
    assert all(d < 1.0 for d in dices)


def test_boundary_noise_deterministic_per_seed(tmp_path: Path) -> None:
    make_kits(tmp_path / "dataset", n_cases=3)
    cases = kits23_source(tmp_path / "dataset")
    noise = {"type": "boundary", "target_dice": 0.9}
    outs = []
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        raw = write_raw_datasets("K", cases, 611, 612, KITS_LABELS, tmp_path / run / "raw",
                                 tmp_path / run / "reference", noise=noise, seed=seed)
        outs.append([read(raw.noisy / "labelsTr" / f"{c}.nii.gz") for c in raw.case_ids])
    for x, y in zip(outs[0], outs[1]):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(outs[0], outs[2]))


def test_boundary_noise_with_custom_structures(tmp_path: Path) -> None:
    make_folder(tmp_path / "src", cases=("a", "b", "c"), ref_values=(1, 2))
    cases = folder_source(tmp_path / "src")
    noise = {"type": "boundary", "target_dice": 0.85, "structures": [[1], [2]]}
    raw = write_raw_datasets("F", cases, 621, 622, {"background": 0, "x": 1, "y": 2, "z": 3},
                             tmp_path / "raw", tmp_path / "reference", noise=noise, seed=0)
    dices = []
    for c in raw.case_ids:
        noisy = read(raw.noisy / "labelsTr" / f"{c}.nii.gz")
        ref = read(raw.reference / "labelsTr" / f"{c}.nii.gz")
        assert set(np.unique(noisy)) <= {0, 1, 2}  # the source's own noisy labels (3) are unused
        dices.append(dice_per_case(noisy, ref))
    assert abs(np.mean(dices) - 0.85) <= DICE_TOLERANCE + 1e-9


def test_kits23_without_boundary_noise_is_an_error(tmp_path: Path) -> None:
    make_kits(tmp_path / "dataset", n_cases=2)
    task_cfg = {"dataset_id": 601, "reference_dataset_id": 602, "labels": KITS_LABELS,
                "noise": {"type": "none"},
                "sources": [{"type": "kits23", "path": str(tmp_path / "dataset")}]}
    with pytest.raises(InputDataError, match=r"case_00000.*no noisy labels.*boundary"):
        convert_task("KiTS", task_cfg, tmp_path / "results")
    assert not any((tmp_path / "results" / "raw").glob("*"))


# --- MM-WHS --------------------------------------------------------------------------------

def test_mmwhs_label_values_are_mapped(tmp_path: Path) -> None:
    originals = make_mmwhs(tmp_path / "ct_train")
    cases = mmwhs_source(tmp_path / "ct_train")
    assert [c.case_id for c in cases] == ["mmwhs_ct_train_1001", "mmwhs_ct_train_1002"]
    expected = {0: 0, 500: 1, 600: 2, 420: 3, 550: 4, 205: 5, 820: 0, 850: 0}
    for case in cases:
        data = case.load()
        orig = originals[case.case_id[len("mmwhs_"):]]
        ref = sitk.GetArrayFromImage(data.reference)
        for value, mapped in expected.items():
            assert (orig == value).any()
            assert (ref[orig == value] == mapped).all()
        # MM-WHS labels are both the noisy and the reference labels.
        np.testing.assert_array_equal(sitk.GetArrayFromImage(data.noisy), ref)
        assert ref.dtype == np.uint8
        assert_geometry(data.reference)


def test_mmwhs_unknown_label_value_names_the_file(tmp_path: Path) -> None:
    make_mmwhs(tmp_path / "ct_train", ids=(1001,))
    bad = heart_labels(0, values=(500, 600, 421, 550, 205))
    save(bad, tmp_path / "ct_train" / "ct_train_1001_label.nii.gz")
    case = mmwhs_source(tmp_path / "ct_train")[0]
    with pytest.raises(InputDataError) as info:
        case.load()
    msg = str(info.value)
    assert "ct_train_1001_label.nii.gz" in msg and "421" in msg and "label_map" in msg


def test_mmwhs_custom_label_map_and_prefix(tmp_path: Path) -> None:
    make_mmwhs(tmp_path / "ct", ids=(1003,))
    lm = {0: 0, 500: 1, 600: 1, 420: 2, 550: 2, 205: 3, 820: 0, 850: 0}
    case = mmwhs_source(tmp_path / "ct", case_prefix="h_", label_map=lm)[0]
    assert case.case_id == "h_ct_train_1003"
    ref = sitk.GetArrayFromImage(case.load().reference)
    assert set(np.unique(ref)) == {0, 1, 2, 3}


# --- folder source -------------------------------------------------------------------------

@pytest.mark.parametrize("suffix0000", [False, True])
def test_folder_source_reads_both_annotators(tmp_path: Path, suffix0000: bool) -> None:
    files = make_folder(tmp_path / "hie", cases=("p01", "p02"), suffix0000=suffix0000)
    (tmp_path / "hie" / "images" / "README.txt").write_text("not an image")
    cases = folder_source(tmp_path / "hie", case_prefix="c2_")
    assert [c.case_id for c in cases] == ["c2_p01", "c2_p02"]
    for case, (name, (img, ref, noisy)) in zip(cases, files.items()):
        data = case.load()
        np.testing.assert_array_equal(sitk.GetArrayFromImage(data.image), img)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(data.reference), ref)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(data.noisy), noisy)
        assert data.files["noisy"].endswith(f"labels_noisy/{name}.nii.gz")
        assert data.files["reference"].endswith(f"labels_reference/{name}.nii.gz")
        assert_geometry(data.image)


def test_folder_source_label_map_applies_to_both_label_files(tmp_path: Path) -> None:
    make_folder(tmp_path / "src", cases=("a",), ref_values=(10, 20), noisy_values=(10, 30))
    case = folder_source(tmp_path / "src", label_map={0: 0, 10: 1, 20: 2, 30: 2})[0]
    data = case.load()
    assert set(np.unique(sitk.GetArrayFromImage(data.reference))) == {0, 1, 2}
    assert set(np.unique(sitk.GetArrayFromImage(data.noisy))) == {0, 1, 2}
    bad = folder_source(tmp_path / "src", label_map={0: 0, 10: 1, 20: 2})[0]
    with pytest.raises(InputDataError, match=r"labels_noisy/a\.nii\.gz.*30"):
        bad.load()


def test_folder_source_missing_label_file_names_it(tmp_path: Path) -> None:
    make_folder(tmp_path / "src", cases=("a", "b"))
    (tmp_path / "src" / "labels_reference" / "b.nii.gz").unlink()
    case = folder_source(tmp_path / "src")[1]
    with pytest.raises(InputDataError, match=r"labels_reference/b\.nii\.gz.*not found"):
        case.load()


def test_remap_labels_keeps_geometry_and_maps_voxelwise() -> None:
    arr = np.array([[[0, 7, 7], [3, 0, 255]]], np.int32)
    out = remap_labels(to_image(arr, spacing=(1.0, 1.0, 1.0)), {0: 0, 7: 2, 3: 1, 255: 4}, "x.nii")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), [[[0, 2, 2], [1, 0, 4]]])
    assert out.GetPixelID() == sitk.sitkUInt8
    assert_geometry(out, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(InputDataError, match=r"x\.nii.*\[7\]"):
        remap_labels(to_image(arr, spacing=(1.0, 1.0, 1.0)), {0: 0, 3: 1, 255: 4}, "x.nii")


def test_remap_labels_negative_fractional_and_wide_values() -> None:
    arr = np.array([[[-1, 0, 1000]]], np.int32)
    out = remap_labels(to_image(arr, spacing=(1.0, 1.0, 1.0)), {-1: 3, 0: 0, 1000: 1}, "x.nii")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), [[[3, 0, 1]]])
    # A mapped value above 255 is kept (not wrapped to uint8) so that validation reports it.
    out = remap_labels(to_image(arr, spacing=(1.0, 1.0, 1.0)), {-1: 300, 0: 0, 1000: 1}, "x.nii")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), [[[300, 0, 1]]])
    frac = np.array([[[0.0, 1.5, np.nan]]], np.float32)
    with pytest.raises(InputDataError, match=r"x\.nii: unexpected label values \[1\.5, nan\]"):
        remap_labels(to_image(frac, spacing=(1.0, 1.0, 1.0)), {0: 0, 1: 1}, "x.nii")


# --- combined task and the written raw layout ------------------------------------------------

HEART_CFG = {
    "dataset_id": 701, "reference_dataset_id": 702, "labels": HEART_LABELS, "channel": "CT",
    "noise": {"type": "none"},
}


def _heart_task(tmp_path: Path) -> tuple[dict, dict, dict]:
    whs = make_mmwhs(tmp_path / "mmwhs")
    folder = make_folder(tmp_path / "centre2", cases=("a", "b"), ref_values=(500, 600),
                         noisy_values=(500, 420))
    cfg = dict(HEART_CFG, sources=[
        {"type": "mmwhs", "path": str(tmp_path / "mmwhs"), "case_prefix": "whs_"},
        {"type": "folder", "path": str(tmp_path / "centre2"), "case_prefix": "c2_",
         "label_map": {"0": 0, "500": 1, "600": 2, "420": 3}},
    ])
    return cfg, whs, folder


def test_combined_mmwhs_and_folder_task(tmp_path: Path) -> None:
    cfg, whs, folder = _heart_task(tmp_path)
    cases = source_cases("Heart", cfg["sources"], seed=0)
    assert [c.case_id for c in cases] == ["whs_ct_train_1001", "whs_ct_train_1002", "c2_a", "c2_b"]
    raw = convert_task("Heart", cfg, tmp_path / "results")
    assert raw.case_ids == tuple(c.case_id for c in cases)
    assert raw.noisy == tmp_path / "results" / "raw" / "Dataset701_Heart"
    assert raw.reference == tmp_path / "results" / "raw" / "Dataset702_HeartRef"
    assert raw.reference_labels == tmp_path / "results" / "reference" / "Heart"
    # Folder cases: noisy and reference labels differ and were both label-mapped.
    noisy = read(raw.noisy / "labelsTr" / "c2_a.nii.gz")
    ref = read(raw.reference / "labelsTr" / "c2_a.nii.gz")
    assert set(np.unique(noisy)) == {0, 1, 3} and set(np.unique(ref)) == {0, 1, 2}
    np.testing.assert_array_equal(ref == 2, folder["a"][1] == 600)
    # MM-WHS cases: identical labels in both twins.
    np.testing.assert_array_equal(read(raw.noisy / "labelsTr" / "whs_ct_train_1002.nii.gz"),
                                  read(raw.reference / "labelsTr" / "whs_ct_train_1002.nii.gz"))


def test_written_raw_layout(tmp_path: Path) -> None:
    cfg, whs, folder = _heart_task(tmp_path)
    raw = convert_task("Heart", cfg, tmp_path / "results")
    ids = sorted(raw.case_ids)
    for d, name, what in ((raw.noisy, "Dataset701_Heart", "noisy"),
                          (raw.reference, "Dataset702_HeartRef", "reference")):
        assert sorted(p.name for p in d.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]
        assert sorted(p.name for p in (d / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in ids]
        assert sorted(p.name for p in (d / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in ids]
        ds = json.loads((d / "dataset.json").read_text())
        assert ds == {"channel_names": {"0": "CT"}, "labels": HEART_LABELS, "numTraining": 4,
                      "file_ending": ".nii.gz", "name": name, "description": ds["description"]}
        assert what in ds["description"] and "Heart" in ds["description"]
    # reference/<Task>/ holds exactly the reference twin's labels.
    assert sorted(p.name for p in raw.reference_labels.iterdir()) == [f"{c}.nii.gz" for c in ids]
    for c in ids:
        ref_twin = raw.reference / "labelsTr" / f"{c}.nii.gz"
        np.testing.assert_array_equal(read(raw.reference_labels / f"{c}.nii.gz"), read(ref_twin))
        # The images are byte-identical in both twins, and equal to the source image.
        img_n, img_r = (d / "imagesTr" / f"{c}_0000.nii.gz" for d in (raw.noisy, raw.reference))
        assert img_n.read_bytes() == img_r.read_bytes()
        # Geometry (spacing, origin, direction) is preserved for images and labels.
        for f in (img_n, ref_twin, raw.noisy / "labelsTr" / f"{c}.nii.gz",
                  raw.reference_labels / f"{c}.nii.gz"):
            assert_geometry(sitk.ReadImage(str(f)))
        assert sitk.ReadImage(str(ref_twin)).GetPixelID() == sitk.sitkUInt8
    src_img = read(tmp_path / "mmwhs" / "ct_train_1001_image.nii.gz")
    np.testing.assert_array_equal(read(raw.noisy / "imagesTr" / "whs_ct_train_1001_0000.nii.gz"),
                                  src_img)
    np.testing.assert_array_equal(read(raw.noisy / "imagesTr" / "c2_b_0000.nii.gz"), folder["b"][0])
    # No temporary folders are left next to the datasets.
    assert sorted(p.name for p in (tmp_path / "results" / "raw").iterdir()) == [
        "Dataset701_Heart", "Dataset702_HeartRef"]
    assert [p.name for p in (tmp_path / "results" / "reference").iterdir()] == ["Heart"]


def test_reconversion_replaces_the_datasets(tmp_path: Path) -> None:
    cfg, _, _ = _heart_task(tmp_path)
    convert_task("Heart", cfg, tmp_path / "results")
    stale = tmp_path / "results" / "raw" / "Dataset701_Heart" / "labelsTr" / "old_case.nii.gz"
    stale.write_bytes(b"stale")
    cfg_one = dict(cfg, sources=cfg["sources"][:1])  # the MM-WHS source only
    raw = convert_task("Heart", cfg_one, tmp_path / "results")
    assert raw.case_ids == ("whs_ct_train_1001", "whs_ct_train_1002")
    assert not stale.exists()
    assert len(list(raw.reference_labels.iterdir())) == 2
    assert json.loads((raw.noisy / "dataset.json").read_text())["numTraining"] == 2


def test_phantom_task_conversion(tmp_path: Path) -> None:
    cfg = {"dataset_id": 801, "reference_dataset_id": 802,
           "labels": {"background": 0, "organ": 1, "lesion": 2}, "noise": {"type": "none"},
           "sources": [{"type": "phantom", "n_cases": 3, "n_noisy_cases": 1,
                        "shape": [8, 16, 16], "spacing": [2.0, 1.0, 1.0]}]}
    raw = convert_task("Ph", cfg, tmp_path, seed=0)
    assert raw.case_ids == ("phantom_000", "phantom_001", "phantom_002")
    n_diff = sum(not np.array_equal(read(raw.noisy / "labelsTr" / f"{c}.nii.gz"),
                                    read(raw.reference / "labelsTr" / f"{c}.nii.gz"))
                 for c in raw.case_ids)
    assert n_diff == 1
    ds = json.loads((raw.noisy / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "MRI"} and ds["name"] == "Dataset801_Ph"


def test_make_dataset_json_and_dataset_name() -> None:
    assert dataset_name(5, "Heart") == "Dataset005_Heart"
    assert dataset_name(502, "Phantom", reference=True) == "Dataset502_PhantomRef"
    ds = make_dataset_json({"background": 0, "a": 1}, 3, "MRI", "Dataset001_X", "d")
    assert ds == {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1},
                  "numTraining": 3, "file_ending": ".nii.gz", "name": "Dataset001_X",
                  "description": "d"}


def test_run_convert_writes_the_manifest_last(tmp_path: Path) -> None:
    cfg, _, _ = _heart_task(tmp_path)
    manifest = tmp_path / "results" / "raw" / "Heart.json"
    run_convert({"task": "Heart", "task_cfg": cfg, "seed": 0}, tmp_path / "results", manifest=manifest)
    m = json.loads(manifest.read_text())
    assert m == {"task": "Heart", "noisy": "Dataset701_Heart", "reference": "Dataset702_HeartRef",
                 "case_ids": ["whs_ct_train_1001", "whs_ct_train_1002", "c2_a", "c2_b"]}
    # A failing conversion writes no manifest.
    manifest2 = tmp_path / "results" / "raw" / "Heart2.json"
    bad = dict(cfg, sources=[{"type": "folder", "path": str(tmp_path / "missing")}])
    with pytest.raises(InputDataError):
        run_convert({"task": "Heart2", "task_cfg": bad, "seed": 0}, tmp_path / "results", manifest=manifest2)
    assert not manifest2.exists()


# --- noise report (on the shared preprocessed phantom fixture) -------------------------------

def test_noise_report_on_the_phantom(preprocessed_phantom: dict[str, Path], tmp_path: Path) -> None:
    import pandas as pd

    from nnrobustloss.datasets.phantom import novice_case_indices
    from nnrobustloss.metrics import evaluate_case
    from nnrobustloss.pipeline import mean_dice, run_noise_report

    out = tmp_path / "noise" / "PhantomTest.csv"
    regions = {"organ": [1], "lesion": [2]}
    df = run_noise_report(
        {"task": "PhantomTest", "dataset_id": 981, "regions": regions, "tolerance_mm": 1.0},
        preprocessed_phantom["results_dir"], out_csv=out)
    csv = pd.read_csv(out)
    assert list(csv.columns) == ["task", "case", "region", "metric", "value", "worst_case"]
    assert len(csv) == 6 * 2 * 3 and (csv["task"] == "PhantomTest").all()
    pd.testing.assert_frame_equal(csv, df, check_dtype=False)
    assert set(csv["metric"]) == {"dice", "asd", "surface_dice"}
    novices = {f"phantom_{i:03d}" for i in novice_case_indices(6, 2, 0)}
    value = csv.set_index(["case", "region", "metric"])["value"]
    for case in sorted(set(csv["case"])):
        if case in novices:
            assert value[case, "lesion", "dice"] < 0.9
            assert value[case, "lesion", "asd"] > 0
            assert value[case, "organ", "dice"] < 1
        else:  # expert labels are the reference labels
            for region in regions:
                assert value[case, region, "dice"] == 1.0
                assert value[case, region, "asd"] == 0.0
                assert value[case, region, "surface_dice"] == 1.0
    # The numbers are evaluate_case's, with the image spacing.
    case = sorted(novices)[0]
    noisy = read(preprocessed_phantom["raw_dir"] / "labelsTr" / f"{case}.nii.gz")
    ref = read(preprocessed_phantom["reference_labels"] / f"{case}.nii.gz")
    direct = evaluate_case(noisy, ref, (2.0, 1.0, 1.0), regions, 1.0)
    for region in regions:
        for metric in ("dice", "asd", "surface_dice"):
            assert value[case, region, metric] == pytest.approx(direct[region][metric])
    dice_rows = csv[csv["metric"] == "dice"]["value"]
    assert mean_dice(out) == pytest.approx(dice_rows.mean())
    assert [p.name for p in out.parent.iterdir()] == ["PhantomTest.csv"]


def test_noise_report_without_converted_data(tmp_path: Path) -> None:
    from nnrobustloss.pipeline import run_noise_report

    out = tmp_path / "noise" / "T.csv"
    params = {"task": "T", "dataset_id": 991, "regions": {"a": [1]}, "tolerance_mm": 1.0}
    with pytest.raises(InputDataError, match=r"Dataset991_T/labelsTr.*convert"):
        run_noise_report(params, tmp_path, out_csv=out)
    (tmp_path / "raw" / "Dataset991_T" / "labelsTr").mkdir(parents=True)
    with pytest.raises(InputDataError, match=r"Dataset991_T/labelsTr: no label files"):
        run_noise_report(params, tmp_path, out_csv=out)
    assert not out.exists()


def test_noise_report_missing_reference_label(tmp_path: Path) -> None:
    from nnrobustloss.pipeline import run_noise_report

    cfg, _, _ = _heart_task(tmp_path)
    raw = convert_task("Heart", cfg, tmp_path / "results")
    (raw.reference_labels / "c2_a.nii.gz").unlink()
    out = tmp_path / "results" / "noise" / "Heart.csv"
    with pytest.raises(InputDataError, match=r"reference/Heart/c2_a\.nii\.gz: file not found"):
        run_noise_report({"task": "Heart", "dataset_id": 701, "regions": {"LV": [1]},
                          "tolerance_mm": 1.0}, tmp_path / "results", out_csv=out)
    assert not out.exists()
