"""config/README.md is generated from the config schema, and every key of the schema is described.

The page (``nnrobustloss.config_docs``) lists every key of ``config.schema.yaml`` with its type,
default, allowed values and description; these tests fail when the committed page lags behind
the schema, when a key lacks a description, or when a key of a bundled config is missing from the
page. Fast: no workflow runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from nnrobustloss.config import validate_config
from nnrobustloss.config_docs import COMMAND, NAME, keys_without_description, load_schema, render, rows

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "config" / "README.md"


def test_committed_page_is_the_generated_one():
    assert PAGE.is_file(), f"config/README.md is missing; write it with: {COMMAND}"
    assert PAGE.read_text(encoding="utf-8") == render(), (
        f"config/README.md differs from the config schema's documentation; regenerate it "
        f"(from the repository root): {COMMAND}")


def _properties(node: Any, path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(path, schema) of every entry of every ``properties`` in the schema, $defs included."""
    if isinstance(node, Mapping):
        for key, sub in (node.get("properties") or {}).items():
            yield f"{path}.{key}".lstrip("."), sub
        for key, sub in node.items():
            yield from _properties(sub, f"{path}.{key}" if key != "properties" else path)
    elif isinstance(node, list):
        for item in node:
            yield from _properties(item, path)


def test_every_schema_property_has_a_description():
    missing = sorted({path for path, sub in _properties(load_schema())
                      if not str(sub.get("description", "")).strip()})
    assert not missing, f"schema keys without a description: {missing}"
    assert keys_without_description() == []


def test_the_page_lists_every_key_once():
    paths = [row.path for row in rows()]
    assert len(paths) == len(set(paths))
    # every properties entry of the schema is a row (those under $defs through tasks.<name>)
    leaves = {path.split(".")[-1] for path, _ in _properties(load_schema())}
    assert leaves <= {p.rsplit(".", 1)[-1] for p in paths}
    assert {"tasks.<name>.sources[].lesion_shape", "custom_methods.<name>.search_space.<name>.log",
            "cluster.seconds_per_epoch.resenc_l", "training.augmentation_workers"} <= set(paths)


def _config_keys(config: Any, path: str, free: set[str], leaves: set[str]) -> Iterator[str]:
    """Key paths of a config as the page writes them: ``<name>`` for the entries of a mapping in
    ``free``, nothing below a path in ``leaves`` (a mapping of names to values is one row)."""
    if path in leaves:
        return
    if isinstance(config, Mapping):
        for key, value in config.items():
            sub = f"{path}.{NAME}" if path in free else f"{path}.{key}".lstrip(".")
            yield sub
            yield from _config_keys(value, sub, free, leaves)
    elif isinstance(config, list) and config and all(isinstance(v, Mapping) for v in config):
        for item in config:
            yield from _config_keys(item, f"{path}[]", free, leaves)


@pytest.mark.parametrize("files", [["config.yaml"], ["config.yaml", "smoke.yaml"], ["paper.yaml"],
                                   ["config.yaml", "noise_sweep.yaml"]])
def test_every_key_of_a_bundled_config_is_on_the_page(files: list[str]):
    config: dict[str, Any] = {}
    for name in files:
        overlay = yaml.safe_load((ROOT / "config" / name).read_text(encoding="utf-8"))
        config = {**config, **overlay}
    config = validate_config(config)
    free = {row.path.removesuffix(f".{NAME}") for row in rows() if row.path.endswith(NAME)}
    leaves = {row.path for row in rows() if "mapping of name to" in row.type}
    documented = {row.path for row in rows()}
    missing = sorted({k for k in _config_keys(config, "", free, leaves) if k not in documented})
    assert not missing, f"config keys not on config/README.md: {missing}"
