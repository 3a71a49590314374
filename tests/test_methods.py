"""Tests of the method registry (nnrobustloss.methods)."""

from __future__ import annotations

import inspect
import math

import optuna
import pytest

from nnrobustloss.errors import ConfigError
from nnrobustloss.methods import (
    METHODS,
    FloatParam,
    default_params,
    get_method,
    methods_of_trainer,
    resolve_params,
)

PAPER_ORDER = ["Baseline", "BaselineRef", "APL1", "APL2", "CoT", "CoTPlus", "StoCoT", "SVLS", "HRL"]
"""The paper's methods; the registry may hold more (a new method needs no change here)."""
PAPER = {m: METHODS[m] for m in PAPER_ORDER}


def test_order_and_display_names():
    assert [m for m in METHODS if m in PAPER_ORDER] == PAPER_ORDER
    assert [m.display_name for m in PAPER.values()] == [
        "Baseline", "Baseline (ref.)", "APL1", "APL2", "CoT", "CoT+", "StoCoT", "SVLS", "HRL"]
    assert all(k == m.id for k, m in METHODS.items())


def test_reference_tuning_and_table2_flags():
    assert [m.id for m in PAPER.values() if m.uses_reference] == ["BaselineRef"]
    assert {m.id for m in PAPER.values() if not m.needs_tuning} == {
        "Baseline", "BaselineRef", "APL1"}
    assert [m.id for m in PAPER.values() if m.table2] == ["SVLS", "HRL"]
    # a method needs tuning exactly when it has a search space
    assert all(m.needs_tuning == bool(m.search_space) for m in METHODS.values())


def _space(method):
    return {p.name: (p.low, p.high, p.log) for p in METHODS[method].search_space}


def test_search_spaces_match_design():
    assert _space("Baseline") == _space("BaselineRef") == _space("APL1") == {}
    assert _space("APL2") == {"w": (1e-3, 1.0, False)}
    assert _space("CoT") == _space("CoTPlus") == {"forget_rate": (0.0, 0.1, False)}
    assert _space("StoCoT") == {"a": (0.5, 8.0, True), "b": (0.5, 8.0, True)}
    assert _space("SVLS") == {"sigma": (0.2, 2.0, False)}
    assert _space("HRL") == {"a": (0.5, 8.0, True), "b": (0.5, 8.0, True),
                             "w": (1e-3, 1.0, False), "sigma": (0.2, 2.0, False)}


def test_default_params():
    assert default_params("APL2") == {"w": 0.5}
    assert default_params("CoT") == {"forget_rate": pytest.approx(0.05)}
    assert default_params("StoCoT") == {"a": pytest.approx(2.0), "b": pytest.approx(2.0)}
    assert default_params("SVLS") == {"sigma": pytest.approx(1.1)}
    assert default_params("Baseline") == {}
    assert FloatParam("x", 1.0, 100.0, log=True).default_value() == pytest.approx(10.0)


def test_suggest_uses_optuna_ranges_and_log_scale():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        values = METHODS["HRL"].suggest(trial)
        assert set(values) == {"a", "b", "w", "sigma"}
        for p in METHODS["HRL"].search_space:
            assert p.low <= values[p.name] <= p.high
            assert trial.distributions[p.name].log is p.log
        study.tell(trial, 0.0)
    assert METHODS["APL1"].suggest(study.ask()) == {}


def test_get_method_unknown_lists_known_names():
    with pytest.raises(ConfigError) as e:
        get_method("CoTplus")
    for name in PAPER_ORDER:
        assert name in str(e.value)


def test_resolve_params_fills_defaults_and_checks():
    assert resolve_params("HRL", {"w": 0.3}) == {"a": pytest.approx(2.0), "b": pytest.approx(2.0),
                                                 "w": 0.3, "sigma": pytest.approx(1.1)}
    assert resolve_params("APL2", {"w": "0.25"}) == {"w": 0.25}
    with pytest.raises(ConfigError, match="unknown parameter"):
        resolve_params("APL2", {"q": 0.5})
    with pytest.raises(ConfigError, match="outside the search range"):
        resolve_params("CoT", {"forget_rate": 0.2})
    with pytest.raises(ConfigError, match="not a number"):
        resolve_params("SVLS", {"sigma": "wide"})
    with pytest.raises(ConfigError, match="outside"):
        resolve_params("SVLS", {"sigma": math.nan})


def test_trainer_classes_resolve_with_nnunet_signature():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    ref = inspect.signature(nnUNetTrainer.__init__)
    for spec in METHODS.values():
        cls = spec.load_trainer_class()
        assert issubclass(cls, nnUNetTrainer)
        assert inspect.signature(cls.__init__) == ref
        assert spec.id in methods_of_trainer(cls)  # the trainer accepts the method it trains
