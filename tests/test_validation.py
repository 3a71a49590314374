"""Bad input to the convert stage: one clear error, and nothing half-written left behind.

Every bad case is converted twice: into an empty results folder (no dataset folder and no
temporary folder may remain) and over an existing good conversion of the same task (which must
stay byte-for-byte untouched).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from nnrobustloss.datasets.convert import convert_task
from nnrobustloss.errors import ConfigError, InputDataError, NNRobustLossError

SHAPE = (6, 12, 14)  # (z, y, x)
SPACING = (2.0, 0.8, 0.9)  # mm (z, y, x)
LABELS = {"background": 0, "organ": 1, "lesion": 2}


# --- helpers -------------------------------------------------------------------------------

def to_image(arr: np.ndarray, spacing=SPACING, origin=(1.0, 2.0, 3.0),
             direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def save(arr: np.ndarray | sitk.Image, path: Path, **geometry) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = arr if isinstance(arr, sitk.Image) else to_image(arr, **geometry)
    sitk.WriteImage(img, str(path), useCompression=True)
    return path


def good_label(k: int = 0) -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[1:5, 2:10, 2:12] = 1
    lab[2:4, 4:8, 4 + k % 3: 8 + k % 3] = 2
    return lab


def good_image(k: int = 0) -> np.ndarray:
    return np.random.default_rng(k).normal(300.0, 50.0, SHAPE).astype(np.float32)


def make_folder_source(root: Path, cases=("a", "b", "c")) -> Path:
    for k, c in enumerate(cases):
        save(good_image(k), root / "images" / f"{c}.nii.gz")
        save(good_label(k), root / "labels_reference" / f"{c}.nii.gz")
        save(good_label(k + 1), root / "labels_noisy" / f"{c}.nii.gz")
    return root


def task_cfg(*paths: Path | None, **extra) -> dict:
    sources = [{"type": "folder", "path": None if p is None else str(p)} for p in paths]
    for s, prefix in zip(sources, extra.pop("prefixes", [])):
        s["case_prefix"] = prefix
    return {"dataset_id": 901, "reference_dataset_id": 902, "labels": dict(LABELS),
            "noise": {"type": "none"}, "sources": sources, **extra}


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every folder (None) and file (its bytes) under ``root``, hidden ones included."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
            for p in sorted(root.rglob("*"))}


def assert_nothing_left(results: Path) -> None:
    """No dataset folder, reference folder or temporary leftover (empty parents are allowed)."""
    leftovers = [k for k in snapshot(results) if k not in ("raw", "reference")]
    assert leftovers == []


@pytest.fixture(params=[False, True], ids=["empty", "over_existing"])
def results(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], None]:
    """A results folder, optionally holding a good conversion of the task; yields a checker."""
    root = tmp_path / "results"
    if request.param:
        good = make_folder_source(tmp_path / "good_source", cases=("g1", "g2"))
        convert_task("T", task_cfg(good), root)
        assert (root / "raw" / "Dataset901_T" / "labelsTr" / "g2.nii.gz").is_file()
    before = snapshot(root)

    def check() -> None:
        if request.param:
            assert snapshot(root) == before
        else:
            assert_nothing_left(root)

    check.root = root  # type: ignore[attr-defined]
    return check


def convert_fails(check, cfg: dict, exc: type[NNRobustLossError], *fragments: str) -> str:
    """Convert ``cfg`` into the checker's results folder; assert the error and the leftovers."""
    with pytest.raises(exc) as info:
        convert_task("T", cfg, check.root)
    msg = str(info.value)
    assert type(info.value) is exc
    assert "\n" not in msg, msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    check()
    return msg


# --- missing and unreadable files ----------------------------------------------------------

@pytest.mark.parametrize("sub", ["labels_noisy", "labels_reference"])
def test_missing_label_file(tmp_path: Path, results, sub: str) -> None:
    src = make_folder_source(tmp_path / "src")
    (src / sub / "b.nii.gz").unlink()
    convert_fails(results, task_cfg(src), InputDataError, str(src / sub / "b.nii.gz"), "not found")


def test_missing_kits23_segmentation(tmp_path: Path, results) -> None:
    d = tmp_path / "kits" / "case_00000"
    save(good_image(), d / "imaging.nii.gz")
    cfg = task_cfg(None)
    cfg["sources"] = [{"type": "kits23", "path": str(tmp_path / "kits")}]
    cfg["noise"] = {"type": "boundary", "target_dice": 0.9}
    convert_fails(results, cfg, InputDataError, str(d / "segmentation.nii.gz"), "not found")


def test_missing_mmwhs_label(tmp_path: Path, results) -> None:
    save(good_image(), tmp_path / "whs" / "ct_train_1001_image.nii.gz")
    cfg = task_cfg(None)
    cfg["sources"] = [{"type": "mmwhs", "path": str(tmp_path / "whs")}]
    convert_fails(results, cfg, InputDataError,
                  str(tmp_path / "whs" / "ct_train_1001_label.nii.gz"), "not found")


@pytest.mark.parametrize("target", ["images/b.nii.gz", "labels_noisy/b.nii.gz",
                                    "labels_reference/c.nii.gz"])
@pytest.mark.parametrize("content", [b"\x1f\x8b garbage bytes, not an image" * 20, b""],
                         ids=["garbage", "empty"])
def test_unreadable_file(tmp_path: Path, results, target: str, content: bytes) -> None:
    src = make_folder_source(tmp_path / "src")
    (src / target).write_bytes(content)
    convert_fails(results, task_cfg(src), InputDataError, str(src / target), "cannot be read")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_truncated_file(tmp_path: Path, results, suffix: str) -> None:
    # A partial download: SimpleITK itself silently fills the missing voxels with zeros.
    src = make_folder_source(tmp_path / "src")
    (src / "images" / "b.nii.gz").unlink()
    f = src / "images" / f"b{suffix}"
    sitk.WriteImage(to_image(good_image(1)), str(f))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) * 2 // 3])
    convert_fails(results, task_cfg(src), InputDataError, str(f), "truncated")


# --- geometry ------------------------------------------------------------------------------

GEOMETRY_CASES = {
    "shape": ({"arr": np.zeros((6, 12, 13), np.uint8)}, "size"),
    "spacing": ({"spacing": (2.0, 0.8, 1.0)}, "spacing"),
    "origin": ({"origin": (1.0, 2.0, 5.0)}, "origin"),
    "direction": ({"direction": (0, 1.0, 0, -1.0, 0, 0, 0, 0, 1.0)}, "direction"),
}


@pytest.mark.parametrize("what", list(GEOMETRY_CASES))
@pytest.mark.parametrize("sub", ["labels_noisy", "labels_reference"])
def test_geometry_mismatch(tmp_path: Path, results, what: str, sub: str) -> None:
    src = make_folder_source(tmp_path / "src")
    kwargs, word = dict(GEOMETRY_CASES[what][0]), GEOMETRY_CASES[what][1]
    arr = kwargs.pop("arr", good_label(1))
    save(arr, src / sub / "b.nii.gz", **kwargs)
    msg = convert_fails(results, task_cfg(src), InputDataError, str(src / sub / "b.nii.gz"),
                        "geometry differs", word, str(src / "images" / "b.nii.gz"))
    assert "Resample" in msg


def test_tiny_origin_difference_is_accepted(tmp_path: Path) -> None:
    # Header round-off (float32 origins) must not count as a mismatch.
    src = make_folder_source(tmp_path / "src", cases=("a",))
    save(good_label(), src / "labels_noisy" / "a.nii.gz", origin=(1.0 + 1e-5, 2.0, 3.0))
    raw = convert_task("T", task_cfg(src), tmp_path / "results")
    assert raw.case_ids == ("a",)


# --- label values --------------------------------------------------------------------------

@pytest.mark.parametrize("sub", ["labels_noisy", "labels_reference"])
def test_label_value_outside_declared_set(tmp_path: Path, results, sub: str) -> None:
    src = make_folder_source(tmp_path / "src")
    lab = good_label()
    lab[0, 0, :3] = 7
    save(lab, src / sub / "c.nii.gz")
    convert_fails(results, task_cfg(src), InputDataError, str(src / sub / "c.nii.gz"),
                  "unexpected label values [7]", "[0, 1, 2]")


@pytest.mark.parametrize("value,fragment", [(421, "source maps only"), (600, "task declares")])
def test_mmwhs_label_value_unknown_or_undeclared(tmp_path: Path, results, value: int,
                                                 fragment: str) -> None:
    # 421 is not an MM-WHS value; 600 (RV) maps to 2, which this 2-class task does not declare.
    whs = tmp_path / "whs"
    for i in (1001, 1002):
        save(good_image(i).astype(np.int16), whs / f"ct_train_{i}_image.nii.gz")
        lab = np.where(good_label() > 0, 500, 0).astype(np.int16)
        save(lab, whs / f"ct_train_{i}_label.nii.gz")
    lab[0, 0, 0] = value
    save(lab, whs / "ct_train_1002_label.nii.gz")
    cfg = task_cfg(None)
    cfg["labels"] = {"background": 0, "LV": 1}
    cfg["sources"] = [{"type": "mmwhs", "path": str(whs)}]
    convert_fails(results, cfg, InputDataError, str(whs / "ct_train_1002_label.nii.gz"),
                  f"[{value if value == 421 else 2}]", fragment)


def test_non_integer_label_value(tmp_path: Path, results) -> None:
    src = make_folder_source(tmp_path / "src")
    lab = good_label().astype(np.float32)
    lab[0, 0, 0] = 1.5
    save(lab, src / "labels_reference" / "b.nii.gz")
    convert_fails(results, task_cfg(src), InputDataError,
                  str(src / "labels_reference" / "b.nii.gz"), "1.5")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_label_value(tmp_path: Path, results, bad: float, suffix: str) -> None:
    # NIfTI: caught on reading (SimpleITK would turn them into background); other formats: by
    # the label-value check.
    src = make_folder_source(tmp_path / "src")
    lab = good_label().astype(np.float32)
    lab[0, 0, 0] = bad
    (src / "labels_noisy" / "b.nii.gz").unlink()
    save(lab, src / "labels_noisy" / f"b{suffix}")
    word = "1 NaN or infinite values" if suffix == ".nii.gz" else f"unexpected label values [{bad}]"
    convert_fails(results, task_cfg(src), InputDataError, str(src / "labels_noisy" / f"b{suffix}"),
                  word)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_non_finite_label_value_through_label_map(tmp_path: Path, results, suffix: str) -> None:
    src = make_folder_source(tmp_path / "src")
    lab = good_label().astype(np.float32)
    lab[0, 0, 0] = np.nan
    (src / "labels_reference" / "b.nii.gz").unlink()
    save(lab, src / "labels_reference" / f"b{suffix}")
    cfg = task_cfg(src)
    cfg["sources"][0]["label_map"] = {"0": 0, "1": 1, "2": 2}
    word = "NaN or infinite" if suffix == ".nii.gz" else "unexpected label values [nan]"
    convert_fails(results, cfg, InputDataError, str(src / "labels_reference" / f"b{suffix}"),
                  word)


def test_background_not_zero_is_an_error(tmp_path: Path, results) -> None:
    src = make_folder_source(tmp_path / "src")
    cfg = task_cfg(src)
    cfg["labels"] = {"background": 1, "organ": 0, "lesion": 2}
    convert_fails(results, cfg, InputDataError, "background")


# --- intensities ---------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_intensities(tmp_path: Path, results, bad: float, suffix: str) -> None:
    # NIfTI: caught on reading (SimpleITK would read them as 0); other formats by validation.
    src = make_folder_source(tmp_path / "src")
    img = good_image(2)
    img[3, 4, 5] = bad
    img[0, 0, 0] = bad
    (src / "images" / "c.nii.gz").unlink()
    save(img, src / "images" / f"c{suffix}")
    convert_fails(results, task_cfg(src), InputDataError, str(src / "images" / f"c{suffix}"),
                  "2 NaN or infinite")


def test_multichannel_image_is_an_error(tmp_path: Path, results) -> None:
    src = make_folder_source(tmp_path / "src")
    vec = sitk.Compose([to_image(good_image(1)), to_image(good_image(2))])
    save(vec, src / "images" / "b.nii.gz")
    convert_fails(results, task_cfg(src), InputDataError, str(src / "images" / "b.nii.gz"),
                  "single-channel", "2 channel")


def test_2d_image_is_an_error(tmp_path: Path, results) -> None:
    src = make_folder_source(tmp_path / "src")
    save(good_image(1)[0], src / "images" / "b.nii.gz", spacing=(0.8, 0.9), origin=(0.0, 0.0),
         direction=(1.0, 0, 0, 1.0))
    convert_fails(results, task_cfg(src), InputDataError, str(src / "images" / "b.nii.gz"), "3D")


# --- case ids and empty sources ------------------------------------------------------------

def test_duplicate_case_ids_across_sources(tmp_path: Path, results) -> None:
    s1 = make_folder_source(tmp_path / "centre1", cases=("a", "b"))
    s2 = make_folder_source(tmp_path / "centre2", cases=("b", "c"))
    convert_fails(results, task_cfg(s1, s2), InputDataError, "'b'", "twice",
                  str(s1 / "images" / "b.nii.gz"), str(s2 / "images" / "b.nii.gz"), "case_prefix")
    # Distinct prefixes resolve it.
    raw = convert_task("T", task_cfg(s1, s2, prefixes=["c1_", "c2_"]), tmp_path / "ok")
    assert raw.case_ids == ("c1_a", "c1_b", "c2_b", "c2_c")


def test_duplicate_case_ids_within_a_folder(tmp_path: Path, results) -> None:
    src = make_folder_source(tmp_path / "src", cases=("a", "b"))
    save(good_image(5), src / "images" / "a_0000.nii.gz")  # also case 'a'
    convert_fails(results, task_cfg(src), InputDataError, "'a'", "twice")


def test_empty_images_folder(tmp_path: Path, results) -> None:
    src = make_folder_source(tmp_path / "src")
    for f in (src / "images").iterdir():
        f.unlink()
    convert_fails(results, task_cfg(src), InputDataError, str(src / "images"), "no image files")


@pytest.mark.parametrize("kind", ["kits23", "mmwhs", "folder"])
def test_empty_source_folder(tmp_path: Path, results, kind: str) -> None:
    (tmp_path / "empty").mkdir()
    cfg = task_cfg(tmp_path / "empty")
    cfg["sources"][0]["type"] = kind
    cfg["noise"] = {"type": "boundary"} if kind == "kits23" else {"type": "none"}
    convert_fails(results, cfg, InputDataError, str(tmp_path / "empty"))


@pytest.mark.parametrize("kind", ["kits23", "mmwhs", "folder"])
def test_missing_source_folder(tmp_path: Path, results, kind: str) -> None:
    cfg = task_cfg(tmp_path / "nowhere")
    cfg["sources"][0]["type"] = kind
    convert_fails(results, cfg, InputDataError, str(tmp_path / "nowhere"), "not found")


@pytest.mark.parametrize("sub", ["images", "labels_noisy", "labels_reference"])
def test_missing_subfolder(tmp_path: Path, results, sub: str) -> None:
    src = make_folder_source(tmp_path / "src")
    for f in (src / sub).iterdir():
        f.unlink()
    (src / sub).rmdir()
    convert_fails(results, task_cfg(src), InputDataError, str(src / sub), "not found")


@pytest.mark.parametrize("path", [None, ""])
def test_missing_source_path_in_config(tmp_path: Path, results, path: str | None) -> None:
    good = make_folder_source(tmp_path / "src")
    cfg = task_cfg(good, good, prefixes=["x_", "y_"])
    if path is None:
        del cfg["sources"][1]["path"]
    else:
        cfg["sources"][1]["path"] = path
    convert_fails(results, cfg, ConfigError, "tasks.T.sources[1].path", "no data path")


def test_unknown_source_type(tmp_path: Path, results) -> None:
    cfg = task_cfg(tmp_path)
    cfg["sources"][0]["type"] = "dicom"
    convert_fails(results, cfg, ConfigError, "tasks.T.sources[0].type", "'dicom'")


def test_no_cases_at_all(tmp_path: Path, results) -> None:
    from nnrobustloss.datasets.raw import write_raw_datasets

    with pytest.raises(InputDataError, match="no cases"):
        write_raw_datasets("T", [], 901, 902, LABELS, results.root / "raw",
                           results.root / "reference")
    results()


# --- command line --------------------------------------------------------------------------

def test_cli_convert_bad_input_exits_1_with_one_line(tmp_path: Path) -> None:
    if importlib.util.find_spec("nnrobustloss.cli") is None:
        pytest.skip("the nnrobustloss command (nnrobustloss.cli) does not exist yet")
    src = make_folder_source(tmp_path / "src")
    lab = good_label()
    lab[0, 0, 0] = 9
    save(lab, src / "labels_noisy" / "a.nii.gz")
    cfg = {"results_dir": str(tmp_path / "results"), "tasks": {"T": task_cfg(src)}}
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    # The same as the installed `nnrobustloss` script, with this interpreter.
    launcher = ("import sys; from nnrobustloss.cli import main; "
                "sys.argv = ['nnrobustloss', *sys.argv[1:]]; sys.exit(main())")
    proc = subprocess.run([sys.executable, "-c", launcher, "convert", "--task", "T",
                           "--configfile", str(cfg_file)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines()
             if ln.strip() and not ln.startswith("[convert T]")]  # progress lines are allowed
    assert len(lines) == 1, proc.stderr
    assert str(src / "labels_noisy" / "a.nii.gz") in lines[0] and "[9]" in lines[0]
    assert "Traceback" not in proc.stderr
    assert_nothing_left(tmp_path / "results")
