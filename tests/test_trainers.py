"""Tests of the trainers, the training-set pseudo Dice and the train() entry point.

The fast tests check the pseudo-Dice arithmetic, progress.csv and the settings against
hand-computed values. The ``slow`` tests train every method through the real nnU-Net pipeline
on the CPU (phantom task of tests/conftest.py, 2 iterations + 1 validation iteration per epoch,
single-threaded augmentation), load a co-teaching checkpoint into the stock nnUNetPredictor and
compare a killed-and-continued run with an uninterrupted one.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nnrobustloss.errors import ConfigError, InputDataError
from nnrobustloss.methods import METHODS
from nnrobustloss.trainers.loading import load_trainer_class
from nnrobustloss.trainers.progress import (
    confusion_counts,
    ema_update,
    pseudo_dice,
    read_progress_csv,
    write_progress_csv,
)
from nnrobustloss.trainers.resume import capture_rng_state, restore_rng_state
from nnrobustloss.trainers.settings import TrainerSettings
from nnrobustloss.training import build_settings, parse_params, resolve_device, train

# ---------------------------------------------------------------------------- pseudo Dice


def _logits_for(pred: np.ndarray, k: int) -> torch.Tensor:
    """Logits whose argmax is ``pred`` ([B, *sp])."""
    return torch.nn.functional.one_hot(torch.as_tensor(pred), k).movedim(-1, 1).float()


def test_confusion_counts_hand_computed():
    pred = np.array([[[0, 1, 1, 2], [2, 2, 0, 1]]])  # [B=1, 2, 4]
    tgt = np.array([[[0, 1, 2, 2], [2, 0, 0, 1]]])
    counts = confusion_counts(_logits_for(pred, 3), torch.as_tensor(tgt)[:, None])
    # class 1: pred at (0,1),(0,2),(1,3); target at (0,1),(1,3) -> tp 2, fp 1, fn 0
    # class 2: pred at (0,3),(1,0),(1,1); target at (0,2),(0,3),(1,0) -> tp 2, fp 1, fn 1
    np.testing.assert_array_equal(counts, [[2, 2], [1, 1], [0, 1]])


def test_confusion_counts_ignore_label_and_shape_check():
    pred = np.array([[1, 1, 0, 0]])
    tgt = np.array([[1, 3, 3, 1]])  # 3 = ignore
    counts = confusion_counts(_logits_for(pred, 3), torch.as_tensor(tgt)[:, None], ignore_label=3)
    np.testing.assert_array_equal(counts, [[1, 0], [0, 0], [1, 0]])
    with pytest.raises(ValueError, match="does not match"):
        confusion_counts(_logits_for(pred, 3), torch.zeros(1, 1, 5))


def test_pseudo_dice_mean_over_classes_and_empty_classes():
    mean, per = pseudo_dice(np.array([[2, 2], [1, 1], [0, 1]]))
    assert per == pytest.approx([4 / 5, 4 / 6])
    assert mean == pytest.approx((4 / 5 + 4 / 6) / 2)
    mean, per = pseudo_dice(np.array([[3, 0], [1, 0], [0, 0]]))  # class 2 empty: skipped
    assert np.isnan(per[1]) and mean == pytest.approx(6 / 7)
    mean, per = pseudo_dice(np.zeros((3, 2), dtype=np.int64))  # nothing anywhere
    assert mean == 1.0 and all(np.isnan(per))
    mean, _ = pseudo_dice(np.array([[0], [4], [0]]))  # only false positives
    assert mean == 0.0


def test_ema_update_sequence():
    values = [0.2, 0.6, 0.4]
    ema = None
    expected = [0.2, 0.9 * 0.2 + 0.1 * 0.6, 0.9 * (0.9 * 0.2 + 0.1 * 0.6) + 0.1 * 0.4]
    for v, e in zip(values, expected, strict=True):
        ema = ema_update(ema, v)
        assert ema == pytest.approx(e, abs=1e-15)


def test_progress_csv_round_trip_full_precision(tmp_path):
    rows = [{"epoch": 0, "train_loss": 0.1 + 0.2, "x": float("nan")},
            {"epoch": 1, "train_loss": 1 / 3, "x": 2.5, "extra": 7}]
    write_progress_csv(tmp_path / "progress.csv", rows)
    back = read_progress_csv(tmp_path / "progress.csv")
    assert list(back[0]) == ["epoch", "train_loss", "x", "extra"]
    assert float(back[0]["train_loss"]) == 0.1 + 0.2 and float(back[1]["train_loss"]) == 1 / 3
    assert back[0]["x"] == "nan" and back[0]["extra"] == "" and back[1]["extra"] == "7"
    assert not [p for p in tmp_path.iterdir() if p.name != "progress.csv"]  # no temp leftovers


# ---------------------------------------------------------------------------- settings


def test_settings_validation_messages():
    s = TrainerSettings(method="HRL", params={"w": 0.2})
    assert s.params["w"] == 0.2 and set(s.params) == {"a", "b", "w", "sigma"}
    with pytest.raises(ConfigError, match="num_epochs"):
        TrainerSettings(method="CoT", num_epochs=0)
    with pytest.raises(ConfigError, match=r"^coteaching.stocot_thresholds='grid': use one of "
                                          r"random, tiled\.$"):
        TrainerSettings(method="StoCoT", options={"coteaching.stocot_thresholds": "grid"})
    with pytest.raises(ConfigError, match=r"^svls.kernel='box': use one of islam, gaussian\.$"):
        TrainerSettings(method="SVLS", options={"svls": {"kernel": "box"}})
    with pytest.raises(ConfigError, match=r"^coteaching.delay=-1: must be an integer >= 0\.$"):
        TrainerSettings(method="CoT", options={"coteaching.delay": -1})
    with pytest.raises(ConfigError, match=r"^coteaching.delay=2.0: must be an integer"):
        TrainerSettings(method="CoT", options={"coteaching.delay": 2.0})
    with pytest.raises(ConfigError, match=r"^svls.hard_dice='yes': must be true or false\.$"):
        TrainerSettings(method="HRL", options={"svls.hard_dice": "yes"})
    with pytest.raises(ConfigError, match=r"^coteaching.max_fraction=0: must be a number > 0 "
                                          r"and <= 1\.$"):
        build_settings("CoT", coteaching={"max_fraction": 0})
    with pytest.raises(ConfigError, match="coteaching.dealy: unknown"):
        build_settings("CoT", coteaching={"dealy": 3})
    s = build_settings("CoT", epochs=5, coteaching={"delay": 1, "gradual": 2}, seed=4)
    assert (s.num_epochs, s.num_iterations_per_epoch, s.seed) == (5, 250, 4)
    # the method's declared options, completed with their defaults; none of another method's
    assert s.options == {"coteaching.delay": 1, "coteaching.gradual": 2,
                         "coteaching.max_fraction": 0.4, "coteaching.peer_updates": "sequential"}
    assert build_settings("SVLS", options={"coteaching": {"delay": 3}, "svls.hard_dice": True}
                          ).options == {"svls.kernel": "islam", "svls.hard_dice": True}
    assert build_settings("Baseline", svls={"kernel": "gaussian"}).options == {}


def test_parse_params(tmp_path):
    assert parse_params(None) == {} and parse_params('{"w": 0.5}') == {"w": 0.5}
    (tmp_path / "best.json").write_text('{"sigma": 1.0}')
    assert parse_params(str(tmp_path / "best.json")) == {"sigma": 1.0}
    with pytest.raises(ConfigError, match="JSON"):
        parse_params("w=0.5")
    with pytest.raises(ConfigError, match="object"):
        parse_params("[1, 2]")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            resolve_device("cuda")


def test_rng_state_round_trip():
    import random

    state = capture_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_trainer_init_signature_is_nnunets():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    ref = inspect.signature(nnUNetTrainer.__init__)
    for spec in METHODS.values():
        assert inspect.signature(load_trainer_class(spec).__init__) == ref


def test_train_rejects_missing_dataset_and_unknown_method(tmp_path):
    with pytest.raises(InputDataError, match="plan stage"):
        train(tmp_path / "nope", "CoT", 0, tmp_path / "out")
    with pytest.raises(ConfigError, match="Known methods"):
        train(tmp_path / "nope", "CoTeaching", 0, tmp_path / "out")


# ---------------------------------------------------------------------------- real training

TRAINED_METHODS = [m for m in METHODS if m != "BaselineRef"]  # BaselineRef = Baseline trainer
COTEACHING = {"CoT", "CoTPlus", "StoCoT", "HRL"}
SHORT = {"iterations_per_epoch": 2, "val_iterations_per_epoch": 1, "device": "cpu"}


@pytest.fixture(scope="module")
def phantom_dir(request) -> Path:
    """The preprocessed noisy phantom dataset of tests/conftest.py, then training-mode settings.

    Planning must run before ``nnUNet_n_proc_DA=0`` is set (nnU-Net's planner crashes with it);
    afterwards augmentation is single-threaded (deterministic) and torch uses one thread.
    """
    try:
        info = request.getfixturevalue("preprocessed_phantom")
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py provides no preprocessed_phantom fixture")
    from conftest import deterministic_cpu_training

    with deterministic_cpu_training():
        yield Path(info["preprocessed_dir"])


def _finite(x: str) -> bool:
    return np.isfinite(float(x))


@pytest.mark.slow
@pytest.mark.parametrize("method", TRAINED_METHODS)
def test_every_method_trains_one_epoch(phantom_dir, tmp_path, method):
    # delay 0, gradual 0: the full selection rate from epoch 0 on
    out = train(phantom_dir, method, 0, tmp_path / method, epochs=1,
                coteaching={"delay": 0, "gradual": 0}, **SHORT)
    assert (out / "checkpoint_final.pth").is_file()
    assert not (out / "checkpoint_latest.pth").exists()
    for name in ("plans.json", "dataset.json", "settings.json"):
        assert (out / name).is_file()
    rows = read_progress_csv(out / "progress.csv")
    assert len(rows) == 1
    row = rows[0]
    assert row["epoch"] == "0"
    for col in ("train_loss", "val_loss", "train_pseudo_dice", "epoch_seconds"):
        assert _finite(row[col]), col
    assert 0.0 <= float(row["train_pseudo_dice"]) <= 1.0
    assert float(row["train_pseudo_dice_ema"]) == float(row["train_pseudo_dice"])
    assert float(row["lr"]) == pytest.approx(0.01)
    ckpt = torch.load(out / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == load_trainer_class(method).__name__
    assert ckpt["nnrobustloss"]["settings"]["method"] == method
    if method in COTEACHING:
        assert "network_weights_peer_b" in ckpt and "optimizer_state_peer_b" in ckpt
        assert float(row["ramp"]) == 1.0
        for peer in ("a", "b"):
            kept = float(row[f"kept_fraction_peer_{peer}"])
            assert 0.0 < kept <= 1.0
            assert _finite(row[f"train_loss_peer_{peer}"])
        if method == "CoT":  # floor((1 - R) N) / N at full resolution, R = 0.05 (default)
            patch = ckpt["init_args"]["plans"]["configurations"]["3d_fullres"]["patch_size"]
            batch = ckpt["init_args"]["plans"]["configurations"]["3d_fullres"]["batch_size"]
            n = batch * int(np.prod(patch))
            assert float(row["kept_fraction_peer_a"]) == np.floor(0.95 * n) / n
        # peers start from different random weights
        a, b = ckpt["network_weights"], ckpt["network_weights_peer_b"]
        assert any(not torch.equal(a[k], b[k]) for k in a)
    else:
        assert "network_weights_peer_b" not in ckpt


@pytest.mark.slow
def test_finished_run_returns_immediately_and_settings_guard(phantom_dir, tmp_path):
    out = train(phantom_dir, "APL2", 0, tmp_path / "r", params={"w": 0.3}, epochs=1, **SHORT)
    final = out / "checkpoint_final.pth"
    stamp = final.stat().st_mtime_ns
    assert train(phantom_dir, "APL2", 0, out, params={"w": 0.3}, epochs=1, **SHORT) == out
    assert final.stat().st_mtime_ns == stamp
    # other settings: never taken as done (issue 22), and the finished model is kept
    with pytest.raises(ConfigError, match=r"checkpoint_final.pth: written by another training "
                                          r"\(other settings: params \(\{'w': 0.3\} -> "
                                          r"\{'w': 0.9\}\)\). The finished model is kept"):
        train(phantom_dir, "APL2", 0, out, params={"w": 0.9}, epochs=1, **SHORT)
    assert final.stat().st_mtime_ns == stamp
    assert json.loads((out / "settings.json").read_text())["params"] == {"w": 0.3}
    with pytest.raises(ConfigError, match="defines folds"):
        train(phantom_dir, "APL2", 99, tmp_path / "bad", epochs=1, **SHORT)


class _Killed(Exception):
    pass


def _kill_after_first_epoch(epoch: int, metrics: dict) -> None:
    assert metrics["epoch"] == epoch
    if epoch == 0:
        raise _Killed


@pytest.mark.slow
def test_coteaching_kill_and_continue_equals_uninterrupted(phantom_dir, tmp_path):
    # StoCoT with the full ramp from epoch 0: every step draws from the selection generator
    kw = dict(epochs=2, coteaching={"delay": 0, "gradual": 0}, seed=1, **SHORT)
    full = train(phantom_dir, "StoCoT", 0, tmp_path / "full", **kw)
    with pytest.raises(_Killed):
        train(phantom_dir, "StoCoT", 0, tmp_path / "cont", epoch_callback=_kill_after_first_epoch,
              **kw)
    assert (tmp_path / "cont" / "checkpoint_latest.pth").is_file()
    assert not (tmp_path / "cont" / "checkpoint_final.pth").exists()
    assert len(read_progress_csv(tmp_path / "cont" / "progress.csv")) == 1
    # a different setting must not silently continue the unfinished run
    with pytest.raises(ConfigError, match="different settings"):
        train(phantom_dir, "StoCoT", 0, tmp_path / "cont", **{**kw, "seed": 2})
    seen: list[int] = []
    cont = train(phantom_dir, "StoCoT", 0, tmp_path / "cont",
                 epoch_callback=lambda e, m: seen.append(e), **kw)
    assert seen == [1]  # only the missing epoch ran

    a = torch.load(full / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    b = torch.load(cont / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    for key in ("network_weights", "network_weights_peer_b"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert torch.equal(a["selection_generator_state"], b["selection_generator_state"])
    ra = read_progress_csv(full / "progress.csv")
    rb = read_progress_csv(cont / "progress.csv")
    assert len(ra) == len(rb) == 2
    for x, y in zip(ra, rb, strict=True):
        assert {k: v for k, v in x.items() if k != "epoch_seconds"} == \
               {k: v for k, v in y.items() if k != "epoch_seconds"}
    assert float(ra[1]["train_pseudo_dice_ema"]) == pytest.approx(
        0.9 * float(ra[0]["train_pseudo_dice"]) + 0.1 * float(ra[1]["train_pseudo_dice"]),
        abs=1e-12)


@pytest.mark.slow
def test_stock_predictor_loads_coteaching_checkpoint(phantom_dir, tmp_path):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnrobustloss.fileio import read_json
    from nnrobustloss.trainers.inference import build_predictor

    out = train(phantom_dir, "CoT", 0, tmp_path / "cot", epochs=1, **SHORT)
    ckpt = torch.load(out / "checkpoint_final.pth", map_location="cpu", weights_only=False)

    # 1. nnU-Net's own network builder and predictor, checkpoint keys as nnU-Net writes them
    plans = read_json(out / "plans.json")
    dataset_json = read_json(out / "dataset.json")
    pm = PlansManager(plans)
    cm = pm.get_configuration(ckpt["init_args"]["configuration"])
    net = nnUNetTrainer.build_network_architecture(
        pm, cm, 1, pm.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False)
    net.load_state_dict(ckpt["network_weights"])  # strict: every key matches
    stock = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=False)
    stock.manual_initialization(net, pm, cm, [ckpt["network_weights"]], dataset_json,
                                ckpt["trainer_name"], ckpt["inference_allowed_mirroring_axes"])

    # 2. our helper (peer A by default, peer B on request)
    pred_a = build_predictor(out, use_mirroring=False)
    pred_b = build_predictor(out, peers="B", use_mirroring=False)

    case = read_json(phantom_dir / "splits_final.json")[0]["val"][0]

    folder = str(phantom_dir / cm.data_identifier)
    ds = infer_dataset_class(folder)(folder, [case])
    data = torch.from_numpy(np.asarray(ds.load_case(case)[0][:], dtype=np.float32))
    logits_stock = stock.predict_sliding_window_return_logits(data)
    logits_a = pred_a.predict_sliding_window_return_logits(data)
    logits_b = pred_b.predict_sliding_window_return_logits(data)
    k = pm.get_label_manager(dataset_json).num_segmentation_heads
    assert logits_a.shape == (k, *data.shape[1:])
    assert torch.isfinite(logits_a).all()
    assert torch.equal(logits_stock, logits_a)
    assert not torch.equal(logits_a, logits_b)
    base = train(phantom_dir, "APL1", 0, tmp_path / "apl1", epochs=1, **SHORT)
    with pytest.raises(InputDataError, match="peer B"):
        build_predictor(base, peers="B")


def _make_trainer(phantom_dir: Path, tmp_path: Path, method: str, **settings):
    from nnrobustloss.fileio import read_json

    plans = read_json(phantom_dir / "nnUNetPlans.json")
    plans["continue_training"] = False
    cls = load_trainer_class(method)
    trainer = cls(plans, "3d_fullres", 0, read_json(phantom_dir / "dataset.json"),
                  torch.device("cpu"))
    trainer.set_output_paths(tmp_path / method, phantom_dir)
    trainer.configure(build_settings(method, **settings))
    return trainer


@pytest.mark.slow
def test_each_peer_is_masked_by_its_partner(phantom_dir, tmp_path):
    from nnrobustloss.losses import per_voxel_ce
    from nnrobustloss.selection import small_loss_mask

    g = torch.Generator().manual_seed(0)
    logits_a, logits_b = torch.randn(2, 3, 4, 6, 6, generator=g), torch.randn(2, 3, 4, 6, 6,
                                                                               generator=g)
    target = torch.randint(0, 3, (2, 1, 4, 6, 6), generator=g)
    cot = _make_trainer(phantom_dir, tmp_path, "CoT", params={"forget_rate": 0.1},
                        coteaching={"delay": 0, "gradual": 0})
    assert cot.output_folder == str((tmp_path / "CoT").resolve())
    assert cot.preprocessed_dataset_folder == str(phantom_dir.resolve() / "nnUNetPlans_3d_fullres")
    mask_a, mask_b = cot.select_level(logits_a, logits_b, target)
    assert torch.equal(mask_a, small_loss_mask(per_voxel_ce(logits_b, target), 0.1))
    assert torch.equal(mask_b, small_loss_mask(per_voxel_ce(logits_a, target), 0.1))
    assert not torch.equal(mask_a, mask_b)
    # levels with deep-supervision weight 0 get no mask (nnU-Net skips their loss)
    masks_a, _ = cot.select([logits_a, logits_a], [logits_b, logits_b], [target, target],
                            [1.0, 0.0])
    assert masks_a[1] is None and torch.equal(masks_a[0], mask_a)

    # StoCoT: a partner certain of every label keeps every voxel for its peer, whatever theta
    sto = _make_trainer(phantom_dir, tmp_path, "StoCoT", coteaching={"delay": 0, "gradual": 0})
    sure = torch.nn.functional.one_hot(target[:, 0], 3).movedim(-1, 1).float() * 50
    unsure = -sure
    mask_a, mask_b = sto.select_level(unsure, sure, target)
    assert mask_a.all()  # chosen by the sure partner B
    assert not mask_b.any()  # chosen by A, whose probability of the label is ~0
    # before the ramp starts every voxel is kept and no threshold is drawn
    late = _make_trainer(phantom_dir, tmp_path, "StoCoT", coteaching={"delay": 5, "gradual": 5})
    state = late.selection_generator.get_state()
    mask_a, mask_b = late.select_level(unsure, sure, target)
    assert mask_a.all() and mask_b.all()
    assert torch.equal(late.selection_generator.get_state(), state)


@pytest.mark.slow
def test_trainer_refuses_settings_of_another_method(phantom_dir, tmp_path):
    trainer = _make_trainer(phantom_dir, tmp_path, "APL2")
    with pytest.raises(ConfigError, match="not 'CoT'"):
        trainer.configure(build_settings("CoT"))
    base = _make_trainer(phantom_dir, tmp_path, "Baseline")
    base.configure(build_settings("BaselineRef", epochs=3))
    assert base.num_epochs == 3 and base.save_every == 1


@pytest.mark.slow
def test_default_schedule_keeps_the_lesion_after_the_ramp(phantom_dir, tmp_path):
    """StoCoT with the default config's final-training budget and co-teaching schedule (the
    paper's 20 + 20 capped at 40 % of the run each): selection starts only after the network has
    learnt the lesion, so voxels labelled lesion are still selected once the ramp is complete
    (delay 1 / gradual 1 rejected every lesion voxel from epoch 6 on and never learnt it)."""
    from nnrobustloss.config import load_config
    from nnrobustloss.pipeline import train_params

    repo = Path(__file__).resolve().parents[1]
    kw = train_params(load_config(repo / "config" / "config.yaml"), "Phantom", "StoCoT", 0)
    out = train(phantom_dir, "StoCoT", 0, tmp_path / "StoCoT", epochs=kw["epochs"],
                iterations_per_epoch=kw["iterations_per_epoch"],
                val_iterations_per_epoch=kw["val_iterations_per_epoch"],
                coteaching=kw["coteaching"], seed=kw["seed"])
    settings = json.loads((out / "settings.json").read_text())
    assert (settings["options"]["coteaching.delay"], settings["options"]["coteaching.gradual"]) \
        == (20, 20)  # the config's; the trainer caps both at 40 % of the run's epochs:
    rows = read_progress_csv(out / "progress.csv")
    ramps = [float(r["ramp"]) for r in rows]
    cap = int(0.4 * kw["epochs"])
    assert ramps == [0.0 if e < cap else min(1.0, (e - cap) / cap) for e in range(kw["epochs"])]
    full = [r for r in rows if float(r["ramp"]) == 1.0]
    assert len(full) >= 3  # the run continues past the end of the ramp
    lesion_kept = [float(r["kept_fraction_class2_peer_a"]) for r in full]
    assert min(lesion_kept) > 0.2, lesion_kept
    assert all(float(r["kept_fraction_class1_peer_a"]) > 0.5 for r in full)
    assert float(full[-1]["train_dice_class2"]) > 0.3


# ---------------------------------------------------------------------------- two-peer memory


def test_peer_updates_setting():
    assert build_settings("CoT").options["coteaching.peer_updates"] == "sequential"
    assert build_settings("CoT", coteaching={"peer_updates": "joint"}
                          ).options["coteaching.peer_updates"] == "joint"
    with pytest.raises(ConfigError, match="coteaching.peer_updates='both'"):
        build_settings("StoCoT", coteaching={"peer_updates": "both"})


def test_peer_updates_is_not_a_result_setting(tmp_path):
    """Changing coteaching.peer_updates neither reruns a finished job (not in the rule params)
    nor blocks continuing an unfinished run; a real setting still does. Its spec says so."""
    from nnrobustloss.config import load_config
    from nnrobustloss.methods import get_method
    from nnrobustloss.pipeline import run_options, train_kwargs, train_params
    from nnrobustloss.training import _check_resume_settings

    assert get_method("CoT").option("coteaching.peer_updates").results is False
    assert get_method("CoT").option("coteaching.delay").results is True
    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(repo / "config" / "config.yaml", overrides={
        "coteaching": {"peer_updates": "joint"}})
    kw = train_params(cfg, "Phantom", "CoT", 0)
    assert "peer_updates" not in kw["coteaching"]
    assert kw == train_params(load_config(repo / "config" / "config.yaml"), "Phantom", "CoT", 0)
    schedule = run_options(cfg, "train")["schedule_options"]
    assert schedule == {"coteaching": {"peer_updates": "joint"}}
    assert train_kwargs(kw, tmp_path, schedule)["options"]["coteaching"]["peer_updates"] == \
        "joint"
    assert "peer_updates" not in train_kwargs(kw, tmp_path)["options"]["coteaching"]
    with pytest.raises(ConfigError, match="peer_updates"):
        load_config(repo / "config" / "config.yaml",
                    overrides={"coteaching": {"peer_updates": "both"}})
    settings = build_settings("CoT", coteaching={"peer_updates": "joint"})
    (tmp_path / "settings.json").write_text(json.dumps(settings.to_dict()))
    _check_resume_settings(tmp_path, build_settings("CoT"))  # sequential: same updates
    with pytest.raises(ConfigError, match=r"different settings \(seed \(0 -> 1\)\)"):
        _check_resume_settings(tmp_path, build_settings("CoT", seed=1))
    with pytest.raises(ConfigError, match=r"different settings "
                                          r"\(coteaching.gradual \(20 -> 3\)\)"):
        _check_resume_settings(tmp_path, build_settings("CoT", coteaching={"gradual": 3}))
    # a run started before the methods declared their options: one line, not a list of keys
    legacy = {k: v for k, v in settings.to_dict().items() if k != "options"}
    (tmp_path / "settings.json").write_text(json.dumps({**legacy, "coteaching_delay": 20}))
    with pytest.raises(ConfigError, match=r"started by an older nnrobustloss .* Delete "):
        _check_resume_settings(tmp_path, build_settings("CoT"))


def _peer_weights(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    ckpt = torch.load(out / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    return {k: ckpt[k] for k in ("network_weights", "network_weights_peer_b",
                                 "optimizer_state_peer_b", "selection_generator_state")}


def _assert_same_state(a, b, where: str = "") -> None:
    """Bitwise equality of nested dicts / lists of tensors and numbers."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_state(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(COTEACHING))
def test_sequential_peer_updates_equal_joint(phantom_dir, tmp_path, method):
    """The memory-saving schedule (B's masks from a no-grad forward, then A's and B's update in
    turn) gives bitwise the same peers, optimiser state, generator state and progress.csv as both
    peers' graphs at once, on the CPU (deterministic kernels); with selection active from epoch 0
    on and two epochs (LR step, momentum)."""
    kw = dict(epochs=2, seed=3, **SHORT)
    out = {mode: train(phantom_dir, method, 0, tmp_path / mode,
                       coteaching={"delay": 0, "gradual": 0, "peer_updates": mode}, **kw)
           for mode in ("joint", "sequential")}
    _assert_same_state(_peer_weights(out["joint"]), _peer_weights(out["sequential"]))
    rows = {m: read_progress_csv(o / "progress.csv") for m, o in out.items()}
    for x, y in zip(rows["joint"], rows["sequential"], strict=True):
        assert float(x["kept_fraction_peer_b"]) < 1.0  # selection was active
        assert {k: v for k, v in x.items() if k != "epoch_seconds"} == \
               {k: v for k, v in y.items() if k != "epoch_seconds"}

# ---------------------------------------------------------------------------- shared warm-up

# 5-epoch trials: delay 2 and gradual 2 (the paper's 20 + 20 capped at 40 %); ramp 0, 0, 0, 0.5,
# 1, so every method selects (and StoCoT draws thresholds) in the two epochs after the warm-up.
WARMUP_TRIAL = {"epochs": 5, "coteaching": {"delay": 20, "gradual": 20}, "seed": 3, **SHORT}
WARMUP_PARAMS = {"CoT": {"forget_rate": 0.1}, "CoTPlus": {"forget_rate": 0.08},
                 "StoCoT": {"a": 0.7, "b": 5.0}}


@pytest.fixture(scope="module")
def warmup_checkpoint(phantom_dir, tmp_path_factory) -> Path:
    """The shared warm-up of :data:`WARMUP_TRIAL` trials (2 epochs of the CoT trainer)."""
    from nnrobustloss.warmup import train_warmup

    return train_warmup(tmp_path_factory.mktemp("warmup"), preprocessed_dataset_dir=phantom_dir,
                        fold=0, **WARMUP_TRIAL)


def _trial(phantom_dir: Path, method: str, out: Path, start_from: Path | None
           ) -> tuple[float, dict[int, float]]:
    """One tuning trial through the real objective of the tuning stage: (objective, the
    values reported to Optuna per epoch)."""
    import optuna

    from nnrobustloss.tuning import training_objective

    call = {"preprocessed_dataset_dir": phantom_dir, "method": method, "fold": 0,
            **WARMUP_TRIAL}
    if start_from is not None:
        call["start_from"] = start_from
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    value = training_objective(call)(trial, WARMUP_PARAMS[method], out)
    study.tell(trial, value)
    return value, dict(study.trials[0].intermediate_values)


@pytest.mark.slow
def test_warmup_checkpoint_holds_the_delay_epochs(phantom_dir, warmup_checkpoint):
    out = warmup_checkpoint.parent
    assert warmup_checkpoint.name == "checkpoint_warmup.pth"
    assert not list(out.glob("checkpoint_latest.pth")) and not (out / "checkpoint_final.pth").exists()
    ckpt = torch.load(warmup_checkpoint, map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 2
    history = ckpt["nnrobustloss"]["progress_history"]
    assert [r["epoch"] for r in history] == [0, 1]
    assert all(r["ramp"] == 0.0 and r["kept_fraction_peer_a"] == 1.0 for r in history)
    settings = ckpt["nnrobustloss"]["settings"]
    assert settings["num_epochs"] == 5  # the trials' LR schedule
    assert settings["options"]["coteaching.delay"] == 20  # scaled to 2 epochs in the 5-epoch runs
    # a second call returns the finished checkpoint untouched
    from nnrobustloss.warmup import train_warmup

    stamp = warmup_checkpoint.stat().st_mtime_ns
    assert train_warmup(out, preprocessed_dataset_dir=phantom_dir, fold=0, **WARMUP_TRIAL) == \
        warmup_checkpoint
    assert warmup_checkpoint.stat().st_mtime_ns == stamp


@pytest.mark.slow
@pytest.mark.parametrize("method", ["CoT", "CoTPlus", "StoCoT"])
def test_trial_from_the_shared_warmup_equals_the_trial_from_scratch(phantom_dir, tmp_path,
                                                                   warmup_checkpoint, method):
    value_a, reported_a = _trial(phantom_dir, method, tmp_path / "scratch", None)
    value_b, reported_b = _trial(phantom_dir, method, tmp_path / "warm", warmup_checkpoint)
    assert value_a == value_b  # the objective, bit for bit
    assert reported_a == reported_b and sorted(reported_b) == [0, 1, 2, 3, 4]
    ra = read_progress_csv(tmp_path / "scratch" / "progress.csv")
    rb = read_progress_csv(tmp_path / "warm" / "progress.csv")
    assert [r["ramp"] for r in ra] == ["0.0", "0.0", "0.0", "0.5", "1.0"]
    assert float(ra[-1]["kept_fraction_peer_a"]) < 1.0  # selection did act after the warm-up
    for x, y in zip(ra, rb, strict=True):
        assert {k: v for k, v in x.items() if k != "epoch_seconds"} == \
               {k: v for k, v in y.items() if k != "epoch_seconds"}
    a = torch.load(tmp_path / "scratch" / "checkpoint_final.pth", map_location="cpu",
                   weights_only=False)
    b = torch.load(tmp_path / "warm" / "checkpoint_final.pth", map_location="cpu",
                   weights_only=False)
    for key in ("network_weights", "network_weights_peer_b"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert torch.equal(a["selection_generator_state"], b["selection_generator_state"])
    assert b["trainer_name"] == a["trainer_name"]  # the trial's trainer, not the warm-up's
    assert json.loads((tmp_path / "warm" / "settings.json").read_text())["params"] == \
        WARMUP_PARAMS[method]


@pytest.mark.slow
def test_start_from_refuses_a_warmup_that_does_not_fit(phantom_dir, tmp_path, warmup_checkpoint):
    kw = {**WARMUP_TRIAL, "start_from": warmup_checkpoint}
    with pytest.raises(ConfigError, match="HRL cannot start from a shared warm-up"):
        train(phantom_dir, "HRL", 0, tmp_path / "hrl", **kw)
    with pytest.raises(ConfigError, match=r"other settings: seed \(3 -> 4\)"):
        train(phantom_dir, "StoCoT", 0, tmp_path / "seed", **{**kw, "seed": 4})
    with pytest.raises(ConfigError, match=r"other settings: num_epochs \("):
        train(phantom_dir, "CoT", 0, tmp_path / "epochs", **{**kw, "epochs": 6})
    with pytest.raises(InputDataError, match="warm-up checkpoint is missing"):
        train(phantom_dir, "CoT", 0, tmp_path / "none",
              **{**kw, "start_from": tmp_path / "missing.pth"})
    # a checkpoint past the delay: the hyper-parameters already acted
    ckpt = torch.load(warmup_checkpoint, map_location="cpu", weights_only=False)
    ckpt["current_epoch"] = 3
    late = tmp_path / "late.pth"
    torch.save(ckpt, late)
    with pytest.raises(ConfigError, match=r"past this run.s shared warm-up \(2 epochs\)"):
        train(phantom_dir, "CoT", 0, tmp_path / "late", **{**kw, "start_from": late})
    assert not (tmp_path / "late" / "checkpoint_final.pth").exists()
