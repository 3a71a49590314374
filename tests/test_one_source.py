"""Each choice list, default and path has one home in the code; the config schema agrees with it.

The schema (``nnrobustloss/schemas/config.schema.yaml``) is what users read and what validates a
config, so it spells the choices out; these tests keep it equal to the lists the code uses.
"""

from __future__ import annotations

from typing import Any

import pytest

from nnrobustloss.config import config_schema, validate_config


def _node(*path: str) -> dict[str, Any]:
    """The schema node at ``path`` (object properties; ``$defs`` by name)."""
    schema = config_schema()
    node: dict[str, Any] = schema
    for key in path:
        node = schema["$defs"][key] if key in schema["$defs"] and node is schema else \
            node["properties"][key]
    return node


def _choices():
    from nnrobustloss.datasets.convert import SOURCE_TYPES
    from nnrobustloss.losses import SVLS_KERNELS
    from nnrobustloss.methods import PEER_UPDATE_MODES
    from nnrobustloss.planning import PLANNERS
    from nnrobustloss.selection import STOCOT_MODES
    from nnrobustloss.training import DEVICES
    from nnrobustloss.tuning import PRUNERS, STORAGES

    return [(("device",), DEVICES), (("planning", "planner"), tuple(PLANNERS)),
            (("tuning", "storage"), STORAGES), (("tuning", "pruner"), PRUNERS),
            (("coteaching", "stocot_thresholds"), STOCOT_MODES),
            (("coteaching", "peer_updates"), PEER_UPDATE_MODES),
            (("svls", "kernel"), SVLS_KERNELS), (("source", "type"), SOURCE_TYPES)]


@pytest.mark.parametrize("index", range(8))
def test_schema_choices_equal_the_code(index: int) -> None:
    path, choices = _choices()[index]
    assert tuple(_node(*path)["enum"]) == tuple(choices), ".".join(path)


def test_schema_option_sections_equal_the_registry() -> None:
    """The config sections of method options (``coteaching``, ``svls``) hold exactly the
    options that the registry's methods declare, with their types, ranges, choices and
    defaults (the schema is what users read; ``MethodSpec.options`` what the trainers get)."""
    from nnrobustloss.methods import declared_options

    declared = declared_options()
    assert set(declared) == {"coteaching", "svls"}
    for section, options in declared.items():
        props = _node(section)["properties"]
        assert set(props) == set(options), section
        for key, option in options.items():
            node = {k: v for k, v in props[key].items() if k != "description"}
            assert node == option.schema(), option.name
            assert props[key].get("description") == option.doc, option.name


def test_declared_choices_are_the_code_s() -> None:
    """The choices declared with the options are those the losses and the selection accept."""
    from nnrobustloss.losses import SVLS_KERNELS
    from nnrobustloss.methods import declared_options
    from nnrobustloss.selection import STOCOT_MODES

    declared = declared_options()
    assert declared["svls"]["kernel"].choices == SVLS_KERNELS
    assert declared["coteaching"]["stocot_thresholds"].choices == STOCOT_MODES


def test_default_methods_are_the_registry() -> None:
    from nnrobustloss.methods import METHODS

    cfg = validate_config({"tasks": {"T": {"dataset_id": 1, "reference_dataset_id": 2,
                                           "labels": {"background": 0, "a": 1},
                                           "sources": [{"type": "phantom"}]}}})
    assert cfg["methods"] == [m for m, spec in METHODS.items() if spec.in_default_study]


def test_phantom_defaults_have_one_home(tmp_path) -> None:
    """A phantom source without settings converts with the generator's defaults, and the
    config's check of n_noisy_cases <= n_cases uses them too."""
    from nnrobustloss.datasets.convert import source_cases
    from nnrobustloss.datasets.phantom import PHANTOM_DEFAULTS
    from nnrobustloss.errors import ConfigError

    cases = source_cases("T", [{"type": "phantom"}], seed=0)
    assert len(cases) == PHANTOM_DEFAULTS["n_cases"]
    image = cases[0].load().image
    assert image.GetSize()[::-1] == tuple(PHANTOM_DEFAULTS["shape"])
    task = {"dataset_id": 1, "reference_dataset_id": 2, "labels": {"background": 0, "a": 1},
            "sources": [{"type": "phantom", "n_noisy_cases": PHANTOM_DEFAULTS["n_cases"] + 1}]}
    with pytest.raises(ConfigError, match="n_noisy_cases: larger than n_cases"):
        validate_config({"tasks": {"T": task}})


def test_every_rule_s_log_and_benchmark_path_comes_from_layout() -> None:
    """A ``log:`` or ``benchmark:`` of a rule is a call of an ``nnrobustloss.layout`` function
    (job_log, task_log, tuning_log, stage_log and their benchmarks), like its outputs."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = [root / "Snakefile", *sorted((root / "workflow" / "rules").glob("*.smk"))]
    found, offenders = 0, []
    for path in files:
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if re.fullmatch(r"\s+(log|benchmark):", line):
                found += 1
                if not lines[i + 1].strip().startswith("str(layout."):
                    offenders.append(f"{path.name}:{i + 2}: {lines[i + 1].strip()}")
    assert found >= 20
    assert not offenders, offenders


def test_log_and_benchmark_paths() -> None:
    """The layout's job log and benchmark paths, as the rules' patterns use them."""
    from nnrobustloss import layout

    r = "results"
    assert str(layout.task_log(r, "convert", "{task}")) == "results/logs/convert/{task}.log"
    assert str(layout.task_benchmark(r, "plan", "{task}")) == "results/benchmarks/plan/{task}.tsv"
    assert str(layout.tuning_log(r, "{task}", "{method}", "{fold}", "worker{worker}")) == \
        "results/logs/tune/{task}/{method}/fold{fold}/worker{worker}.log"
    assert str(layout.tuning_benchmark(r, "{task}", "warmup", "{fold}", "seed{seed}")) == \
        "results/benchmarks/tune/{task}/warmup/fold{fold}/seed{seed}.tsv"
    assert str(layout.stage_log(r, "report")) == "results/logs/report.log"
    assert str(layout.stage_benchmark(r, "report")) == "results/benchmarks/report.tsv"
    assert str(layout.job_log(r, "train", "T", "M", 0, 1)) == "results/logs/train/T/M/fold0_rep1.log"
