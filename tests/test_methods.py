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

    from nnrobustloss.trainers.loading import load_trainer_class

    ref = inspect.signature(nnUNetTrainer.__init__)
    for spec in METHODS.values():
        cls = load_trainer_class(spec)
        assert issubclass(cls, nnUNetTrainer)
        assert inspect.signature(cls.__init__) == ref
        assert spec.id in methods_of_trainer(cls)  # the trainer accepts the method it trains


# ---------------------------------------------------------------------------- method options


def test_each_method_declares_the_options_its_trainer_reads():
    names = {m: [o.name for o in spec.options] for m, spec in PAPER.items()}
    schedule = ["coteaching.delay", "coteaching.gradual", "coteaching.max_fraction",
                "coteaching.peer_updates"]
    svls = ["svls.kernel", "svls.hard_dice"]
    assert names == {"Baseline": [], "BaselineRef": [], "APL1": [], "APL2": [],
                     "CoT": schedule, "CoTPlus": schedule,
                     "StoCoT": schedule + ["coteaching.stocot_thresholds"], "SVLS": svls,
                     "HRL": schedule + ["coteaching.stocot_thresholds"] + svls}
    # only the peers' update schedule changes no result
    assert [o.name for spec in PAPER.values() for o in spec.options if not o.results] == \
        ["coteaching.peer_updates"] * 4


def test_resolve_options_takes_sections_or_names_and_fills_defaults():
    from nnrobustloss.methods import resolve_options

    assert resolve_options("SVLS") == {"svls.kernel": "islam", "svls.hard_dice": False}
    assert resolve_options("SVLS", {"svls": {"kernel": "gaussian"}}) == \
        resolve_options("SVLS", {"svls.kernel": "gaussian"}) == \
        {"svls.kernel": "gaussian", "svls.hard_dice": False}
    # the config's sections hold every method's options: another method's are left out
    assert resolve_options("APL2", {"svls": {"kernel": "gaussian"},
                                    "coteaching": {"delay": 3}}) == {}
    assert resolve_options("CoT", {"coteaching": {"delay": 3, "max_fraction": 1}})[
        "coteaching.max_fraction"] == 1.0
    with pytest.raises(ConfigError, match=r"^option\(s\) svls.kernal: unknown; the methods' "
                                          r"options are .*svls.kernel"):
        resolve_options("SVLS", {"svls": {"kernal": "islam"}})
    with pytest.raises(ConfigError, match="'section.key' name"):
        resolve_options("SVLS", {"kernel": "islam"})


def test_option_checks_name_the_key():
    from nnrobustloss.methods import MethodOption

    frac = MethodOption("sec", "frac", "float", 0.5, minimum=0, maximum=1,
                        exclusive_minimum=True)
    assert frac.check(1) == 1.0 and isinstance(frac.check(1), float)
    for bad in (0, 1.5, True, "0.5", math.nan):
        with pytest.raises(ConfigError, match=r"^sec.frac=.*: must be a number > 0 and <= 1\.$"):
            frac.check(bad)
    count = MethodOption("sec", "n", "int", 2, minimum=0)
    assert count.check(3) == 3
    with pytest.raises(ConfigError, match=r"^sec.n=2.5: must be an integer >= 0\.$"):
        count.check(2.5)
    assert count.schema() == {"type": "integer", "minimum": 0, "default": 2}
    assert frac.schema() == {"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                             "default": 0.5}
    with pytest.raises(ConfigError, match=r"^sec.n=-1: must be an integer >= 0\.$"):
        MethodOption("sec", "n", "int", -1, minimum=0)  # a bad default is refused too
    with pytest.raises(ConfigError, match="choices"):
        MethodOption("sec", "mode", "choice", "a")


def test_config_options_split_result_and_run_options():
    from nnrobustloss.methods import config_options

    cfg = {"coteaching": {"delay": 5, "peer_updates": "joint", "gradual": 1},
           "svls": {"kernel": "gaussian"}, "seed": 3}
    assert config_options(cfg, results=True) == {"coteaching": {"delay": 5, "gradual": 1},
                                                  "svls": {"kernel": "gaussian"}}
    assert config_options(cfg, results=False) == {"coteaching": {"peer_updates": "joint"}}
    assert config_options({}, results=True) == {}


def test_pipeline_and_training_name_no_method_option():
    """The pipeline and the training stage pass the options that the methods declare without
    naming any (issue 20): neither their sections nor their keys appear in the source."""
    import re
    from pathlib import Path

    import nnrobustloss
    from nnrobustloss.methods import declared_options

    patterns = []
    for section, options in declared_options().items():
        patterns.append(rf"\b{section}\b")  # a section, as a word (not CoTeachingTrainer)
        for key in options:  # a key: as an attribute, a string or a field name (svls_kernel)
            patterns += [rf"\.{key}\b", rf"[\"']{key}[\"']", rf"\b{section}_{key}\b"]
            if "_" in key:
                patterns.append(rf"\b{key}\b")
    for module in ("pipeline.py", "training.py"):
        text = (Path(nnrobustloss.__file__).parent / module).read_text()
        found = sorted({m.group(0) for p in patterns for m in re.finditer(p, text)})
        assert found == [], f"{module} names {found}"
    # the patterns find what the old code wrote
    old = 'co = dict(kw["coteaching"]); settings.svls_kernel; x.peer_updates; "delay"'
    assert sum(bool(re.search(p, old)) for p in patterns) >= 4
