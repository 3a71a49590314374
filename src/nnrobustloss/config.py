"""Loading and validating the pipeline configuration.

The JSON schema (``schemas/config.schema.yaml`` in this package; ``workflow/schemas`` links to
it) defines every key, its type, range and default. :func:`validate_config` checks a config
against it, fills in defaults, and adds the checks a schema cannot express (folds within
``n_folds``, unique dataset ids, consecutive label values, integer ``label_map`` keys, regions
named in tolerances, no SQLite storage shared by several tuning workers). Every problem is raised as one
:class:`ConfigError` naming the key.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from nnrobustloss.errors import ConfigError
from nnrobustloss.mappings import deep_update

SCHEMA_RESOURCE = "schemas/config.schema.yaml"


@cache
def config_schema() -> dict[str, Any]:
    """The configuration JSON schema as a dict."""
    text = resources.files("nnrobustloss").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _key(path: Any) -> str:
    parts = [f"[{p}]" if isinstance(p, int) else f".{p}" for p in path]
    return "".join(parts).lstrip(".") or "<top level>"


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if ref:
        node: Any = root
        for part in ref.lstrip("#/").split("/"):
            node = node[part]
        return node
    return schema


def _fill_defaults(instance: Any, schema: Mapping[str, Any], root: Mapping[str, Any]) -> None:
    """Insert schema defaults for missing keys, recursively (objects and arrays)."""
    schema = _resolve(schema, root)
    if isinstance(instance, dict):
        for key, sub in schema.get("properties", {}).items():
            sub_r = _resolve(sub, root)
            if key not in instance and "default" in sub_r:
                instance[key] = copy.deepcopy(sub_r["default"])
            if key in instance:
                _fill_defaults(instance[key], sub_r, root)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, value in instance.items():
                if key not in schema.get("properties", {}):
                    _fill_defaults(value, extra, root)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for item in instance:
            _fill_defaults(item, schema["items"], root)


def _parse_string(text: str, kinds: list[str]) -> Any:
    """``text`` as the first of the schema's ``kinds`` it spells, else unchanged. Snakemake's
    ``--config`` hands nested values over as strings (YAML's BaseLoader): ``folds=[1]`` gives
    ``['1']`` and ``'prediction={mirroring: false}'`` gives ``'false'``."""
    t = text.strip()
    if "integer" in kinds and re.fullmatch(r"[+-]?\d+", t):
        return int(t)
    if "number" in kinds:
        try:
            return float(t)
        except ValueError:
            pass
    if "boolean" in kinds and t.lower() in ("true", "false"):
        return t.lower() == "true"
    if ({"array", "object"} & set(kinds)) and t[:1] in "[{":
        try:
            return yaml.safe_load(t)
        except yaml.YAMLError:
            return text
    return text


def _coerce_strings(instance: Any, schema: Mapping[str, Any], root: Mapping[str, Any]) -> Any:
    """Apply :func:`_parse_string` wherever the schema wants something other than a string."""
    schema = _resolve(schema, root)
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds or [])
    for alternative in schema.get("oneOf", []):
        alt = _resolve(alternative, root).get("type")
        kinds += [alt] if isinstance(alt, str) else list(alt or [])
    if isinstance(instance, str) and "string" not in kinds and kinds:
        parsed = _parse_string(instance, kinds)
        if isinstance(parsed, str):
            return parsed
        instance = parsed
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {k: _coerce_strings(v, props[k], root) if k in props else
                (_coerce_strings(v, extra, root) if isinstance(extra, dict) else v)
                for k, v in instance.items()}
    if isinstance(instance, list) and isinstance(schema.get("items"), dict):
        return [_coerce_strings(v, schema["items"], root) for v in instance]
    return instance


def _message(err: jsonschema.ValidationError) -> str:
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        unexpected = sorted(set(err.instance) - set(allowed))
        where = _key([*err.absolute_path, unexpected[0]]) if unexpected else _key(err.absolute_path)
        hint = f"; known keys here: {', '.join(allowed)}" if allowed else ""
        return f"config key {where}: unknown key{hint}."
    if err.validator == "required":
        return f"config key {_key(err.absolute_path)}: {err.message}."
    return f"config key {_key(err.absolute_path)}: {err.message}."


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``config`` against the schema and return a copy with all defaults filled in.

    ``folds`` defaults to every fold ``0 .. n_folds - 1`` and ``methods`` to every method of the
    registry's default study (:func:`default_methods`) and of ``custom_methods`` (which are
    imported, checked and registered here); a task set to null is removed (how an
    overlay leaves out a task of the config it extends). Raises :class:`ConfigError` naming
    the first offending key (the deepest schema error).
    """
    schema = config_schema()
    cfg = _coerce_strings(_drop_null_tasks(config), schema, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (-len(e.absolute_path), e.message))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        raise ConfigError(_message(best) + " See workflow/schemas/config.schema.yaml.")
    if "folds" not in cfg:  # the schema's static default would not follow n_folds
        cfg["folds"] = list(range(int(cfg.get("n_folds", 3))))
    if cfg.get("custom_methods"):  # imported and checked here; a file path made absolute
        from nnrobustloss.trainers.loading import register_custom_methods

        for method, spec in register_custom_methods(cfg["custom_methods"]).items():
            cfg["custom_methods"][method] = dict(cfg["custom_methods"][method],
                                                 trainer=spec.trainer_class)
    if "methods" not in cfg:  # the registry is the one list of the study's methods
        cfg["methods"] = default_methods(cfg)
    _fill_defaults(cfg, schema, schema)
    _expand_noise_sweep(cfg)
    _check_semantics(cfg)
    return cfg


def _drop_null_tasks(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` without the tasks an overlay set to null (``tasks: {HIE: null}``):
    overlays are merged key by key, so null is how one removes a task of the file below it."""
    cfg = copy.deepcopy(dict(config))
    if isinstance(cfg.get("tasks"), Mapping):
        cfg["tasks"] = {name: task for name, task in cfg["tasks"].items() if task is not None}
    return cfg


def noise_sweep_tasks(cfg: Mapping[str, Any]) -> dict[str, int]:
    """``{task name: n_noisy_cases}`` of the noise sweep's levels in the order of
    ``noise_sweep.n_noisy_cases`` (empty without a ``noise_sweep`` block); names are
    ``<task>Noisy<NN>``, e.g. ``PhantomNoisy04``."""
    sweep = cfg.get("noise_sweep")
    if not sweep:
        return {}
    return {f"{sweep['task']}Noisy{n:02d}": int(n) for n in sweep["n_noisy_cases"]}


def _expand_noise_sweep(cfg: dict[str, Any]) -> None:
    """Replace the sweep's template task by one task per level (idempotent).

    Every level is a copy of the template (same phantom seed, cases, plans and hence the same
    case ids and splits) whose phantom source has the level's ``n_noisy_cases``, with dataset
    ids ``dataset_id_start + 2i`` (noisy) and ``+ 2i + 1`` (reference).
    """
    levels = noise_sweep_tasks(cfg)
    if not levels:
        return
    template_name = cfg["noise_sweep"]["task"]
    tasks = cfg["tasks"]
    if template_name not in tasks:
        if all(name in tasks for name in levels):
            return  # already expanded
        raise ConfigError(f"config key noise_sweep.task: {template_name!r} is not a task of the "
                          f"config (tasks: {', '.join(tasks)}).")
    template = tasks[template_name]
    phantoms = [i for i, src in enumerate(template["sources"]) if src["type"] == "phantom"]
    if len(template["sources"]) != 1 or not phantoms:
        raise ConfigError(f"config key noise_sweep.task: task {template_name!r} must have exactly "
                          "one source, of type phantom (the sweep varies its n_noisy_cases).")
    n_cases = _phantom_setting(template["sources"][0], "n_cases")
    start = cfg["noise_sweep"]["dataset_id_start"]
    expanded: dict[str, Any] = {k: v for k, v in tasks.items() if k != template_name}
    for i, (name, n_noisy) in enumerate(levels.items()):
        if n_noisy > n_cases:
            raise ConfigError(f"config key noise_sweep.n_noisy_cases: {n_noisy} is larger than "
                              f"the {n_cases} cases of task {template_name!r}.")
        if name in expanded:
            raise ConfigError(f"config key noise_sweep: the generated task {name} already "
                              "exists in tasks; rename that task.")
        level = copy.deepcopy(template)
        level["dataset_id"], level["reference_dataset_id"] = start + 2 * i, start + 2 * i + 1
        level["sources"][0]["n_noisy_cases"] = n_noisy
        expanded[name] = level
    cfg["tasks"] = expanded


def default_methods(cfg: Mapping[str, Any]) -> list[str]:
    """The methods of a config that lists none: the registry's built-in methods of the default
    study (:func:`nnrobustloss.methods.default_study_methods`; an example method is built only
    when listed), then the config's ``custom_methods``."""
    from nnrobustloss.methods import default_study_methods

    return default_study_methods() + list(cfg.get("custom_methods") or {})


def known_methods(cfg: Mapping[str, Any]) -> list[str]:
    """The method ids a config may list: the registry's built-in methods in its order, then
    the config's ``custom_methods``."""
    from nnrobustloss.methods import builtin_methods

    return builtin_methods() + list(cfg.get("custom_methods") or {})


def _check_semantics(cfg: Mapping[str, Any]) -> None:
    known = known_methods(cfg)
    for method in cfg["methods"]:
        if method not in known:
            raise ConfigError(f"config key methods: unknown method {method!r}; known methods "
                              f"are {', '.join(known)} (nnrobustloss.methods and the config's "
                              "custom_methods).")
    for fold in cfg["folds"]:
        if fold >= cfg["n_folds"]:
            raise ConfigError(f"config key folds: fold {fold} does not exist with "
                              f"n_folds={cfg['n_folds']} (folds are 0..{cfg['n_folds'] - 1}).")
    seen: dict[int, str] = {}
    for name, task in cfg["tasks"].items():
        for key in ("dataset_id", "reference_dataset_id"):
            did = task[key]
            if did in seen:
                raise ConfigError(f"config key tasks.{name}.{key}: dataset id {did} is already "
                                  f"used by {seen[did]}; every dataset needs its own id.")
            seen[did] = f"tasks.{name}"
        if task["labels"].get("background") != 0:
            raise ConfigError(f"config key tasks.{name}.labels.background: must be 0.")
        values = list(task["labels"].values())
        if len(set(values)) != len(values):
            raise ConfigError(f"config key tasks.{name}.labels: label values must be unique.")
        missing = sorted(set(range(max(values) + 1)) - set(values))
        if missing:
            raise ConfigError(f"config key tasks.{name}.labels: values {sorted(values)} have a gap "
                              f"(no label {', '.join(map(str, missing))}); nnU-Net needs the "
                              f"consecutive values 0..{len(values) - 1}. Renumber the labels and "
                              "map the source values onto them with the source's label_map.")
        declared = set(values) - {0}
        for region, region_values in task["regions"].items():
            if region in task["labels"]:
                raise ConfigError(f"config key tasks.{name}.regions.{region}: the name is already "
                                  "used by a class of the task's labels. Rename the region.")
            unknown = sorted(set(region_values) - declared)
            if unknown:
                raise ConfigError(f"config key tasks.{name}.regions.{region}: label values "
                                  f"{unknown} are not foreground labels of the task "
                                  f"({sorted(declared)}).")
        for j, structure in enumerate(task["noise"].get("structures") or []):
            unknown = sorted(set(structure) - declared)
            if unknown:
                raise ConfigError(f"config key tasks.{name}.noise.structures[{j}]: label values "
                                  f"{unknown} are not foreground labels of the task "
                                  f"({sorted(declared)}).")
        tol = task["tolerance_mm"]
        if isinstance(tol, dict):
            known = set(evaluation_regions(task))
            for region in tol:
                if region not in known:
                    raise ConfigError(f"config key tasks.{name}.tolerance_mm.{region}: not a class "
                                      f"or region of the task ({', '.join(sorted(known))}).")
            missing = known - set(tol)
            if missing:
                raise ConfigError(f"config key tasks.{name}.tolerance_mm: no tolerance for "
                                  f"{', '.join(sorted(missing))}.")
        for i, src in enumerate(task["sources"]):
            for key in (src.get("label_map") or {}):
                if not re.fullmatch(r"[+-]?\d+", str(key).strip()):
                    raise ConfigError(f"config key tasks.{name}.sources[{i}].label_map.{key}: not "
                                      "an integer label value of the source; write the source's "
                                      "values as integers, e.g. {500: 1, 600: 2}.")
            if src["type"] == "phantom" and (_phantom_setting(src, "n_noisy_cases")
                                             > _phantom_setting(src, "n_cases")):
                raise ConfigError(f"config key tasks.{name}.sources[{i}].n_noisy_cases: larger "
                                  "than n_cases.")
    tuning = cfg["tuning"]
    if tuning["storage"] == "sqlite" and tuning["workers"] != "auto" and tuning["workers"] > 1:
        raise ConfigError(f"config key tuning.workers: {tuning['workers']} workers cannot share "
                          "an SQLite storage (SQLite locking is unsafe on shared and network "
                          "file systems). Set tuning.storage to journal (or postgresql), or "
                          "tuning.workers to 1.")
    planning = cfg["planning"]
    if planning["planner"] == "cpu" and "cpu_plan" not in planning:
        raise ConfigError("config key planning.cpu_plan: required when planning.planner is cpu.")
    from nnrobustloss.cost import tuned_methods, tuning_workers
    from nnrobustloss.nnunet_results import nnunet_models

    nnunet_models(cfg)  # two methods must not be one model of the nnU-Net results tree
    for method in tuned_methods(cfg):  # tuning.workers: auto must be able to split each study
        tuning_workers(cfg, method)


def _phantom_setting(source: Mapping[str, Any], key: str) -> Any:
    """A phantom source's ``key``, or the generator's default
    (:data:`nnrobustloss.datasets.phantom.PHANTOM_DEFAULTS`)."""
    from nnrobustloss.datasets.phantom import PHANTOM_DEFAULTS

    return source.get(key, PHANTOM_DEFAULTS[key])


def evaluation_regions(task: Mapping[str, Any]) -> dict[str, list[int]]:
    """Regions evaluated for a task: each foreground class (unless ``include_classes`` is false)
    followed by the task's extra ``regions``, as ``{name: [label values]}`` in that order."""
    from nnrobustloss.metrics.regions import build_regions

    labels = task["labels"] if task.get("include_classes", True) else {"background": 0}
    return build_regions(labels, task.get("regions") or {})


def load_config(*paths: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None
                ) -> dict[str, Any]:
    """Load YAML config files (later files update earlier ones key by key, recursively), apply
    ``overrides`` the same way, validate and fill defaults."""
    merged: dict[str, Any] = {}
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found.")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e}).") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys.")
        merged = deep_update(merged, data)
    if overrides:
        merged = deep_update(merged, overrides)
    return validate_config(merged)

