"""``config/README.md``: every configuration key, generated from the config schema.

The schema (``schemas/config.schema.yaml`` in this package) is the one description of the
configuration: it validates a config, fills in its defaults, and through this module documents
it. Regenerate the page after a change of the schema::

    PYTHONPATH=src python -m nnrobustloss.config_docs > config/README.md

``tests/test_config_docs.py`` fails while the committed page differs from :func:`render`, or
while a key of the schema lacks a ``description``. Only the standard library and PyYAML.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

__all__ = ["COMMAND", "Row", "keys_without_description", "load_schema", "main", "render", "rows"]

COMMAND = "PYTHONPATH=src python -m nnrobustloss.config_docs > config/README.md"
"""The command that writes ``config/README.md`` (from the repository root)."""

SCHEMA_RESOURCE = "schemas/config.schema.yaml"
TAG = re.compile(r"<(?=[A-Za-z/!])")
"""The start of what Markdown would read as an HTML tag."""
NAME = "<name>"
"""The key-path part of a free-named entry (``additionalProperties``): a task, a method, ..."""

INTRO = """\
# Configuration

The workflow reads one configuration: `config/config.yaml` (the bundled `Phantom` task with
CPU-sized budgets) unless `--configfile` names others. Each further file is an overlay: later
files win key by key, lists are replaced whole, and a task set to `null` (`tasks: {HIE: null}`)
is removed. Pass `config/config.yaml` first to extend the default instead of replacing it:

```bash
snakemake --cores 2                                        # config/config.yaml
snakemake --cores 2 --configfile config/config.yaml config/smoke.yaml \\
    --config results_dir=results/smoke                     # a tiny smoke run of every method
snakemake --profile profiles/slurm \\
    --configfile config/paper.yaml config/paths.yaml       # the paper's study (paths: yours)
snakemake --cores 2 --configfile config/config.yaml config/noise_sweep.yaml
```

| file | what it is |
| --- | --- |
| `config.yaml` | the embedded default: the phantom study on a CPU |
| `smoke.yaml` | overlay of `config.yaml`: tiny budgets, every method, folds 0 and 1 |
| `paper.yaml` | the paper's study (HIE, Heart, KiTS23; ResEnc-L plans; GPU budgets) |
| `paths.example.yaml` | data paths of `paper.yaml`: copy to `config/paths.yaml`, fill in, pass after it |
| `noise_sweep.yaml` | overlay of `config.yaml`: the phantom study at four noise levels |
| `kits23_stages.yaml`, `kits23_stages_cpu.yaml` | overlays of `paper.yaml`: its stages on a CPU |

Single keys can be set on the command line, `--config seed=1 'folds=[1]'`. At start-up the
merged configuration is validated against the JSON schema
[`workflow/schemas/config.schema.yaml`](../workflow/schemas/config.schema.yaml): an unknown key,
a wrong type or an out-of-range value stops the run with a message naming the key, and every
missing key with a default gets it. The tables below list every key of that schema: `<name>`
stands for a name you choose (a task, a method, a label), `[]` for each item of a list.
"""

GENERATED_NOTE = ("<!-- Generated from src/nnrobustloss/schemas/config.schema.yaml by "
                  "nnrobustloss.config_docs; do not edit. Regenerate: {command} -->")


@dataclass(frozen=True)
class Row:
    """One key of the configuration: its dotted path (``tasks.<name>.sources[].type``) and the
    columns of its table row."""

    path: str
    type: str
    default: str
    allowed: str
    description: str


def load_schema() -> dict[str, Any]:
    """The configuration schema (``nnrobustloss/schemas/config.schema.yaml``) as a dict."""
    text = resources.files("nnrobustloss").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _resolve(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """``node`` with a ``$ref`` (``#/$defs/<name>``) replaced by its target; the node's own
    keys (a description) win over the target's."""
    ref = node.get("$ref")
    if not ref:
        return node
    target = root
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**_resolve(target, root), **{k: v for k, v in node.items() if k != "$ref"}}


def _flow(value: Any) -> str:
    """``value`` in YAML flow style, as a config file would write it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return json.dumps(value)


def _code(text: str) -> str:
    return f"`{text}`"


def _is_object(node: Mapping[str, Any]) -> bool:
    return node.get("type") == "object" or "properties" in node


def _entries(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The value schema of a mapping's free-named entries when they are objects (rows of their
    own), else None (their type and range go into the mapping's own row)."""
    extra = node.get("additionalProperties")
    if isinstance(extra, Mapping) and _is_object(_resolve(extra, root)):
        return _resolve(extra, root)
    return None


def _type(node: Mapping[str, Any], root: Mapping[str, Any]) -> str:
    """The type column: ``integer``, ``number or null``, ``list of integer``, ``mapping``, ..."""
    node = _resolve(node, root)
    if "oneOf" in node:
        return " or ".join(_type(branch, root) for branch in node["oneOf"])
    kind = node.get("type")
    if kind is None and "enum" in node:
        return " or ".join(_code(_flow(v)) for v in node["enum"])
    if isinstance(kind, list):
        return " or ".join(kind)
    if kind == "array":
        items = node.get("items")
        return f"list of {_type(items, root)}" if isinstance(items, Mapping) else "list"
    if _is_object(node):
        extra = node.get("additionalProperties")
        if isinstance(extra, Mapping) and not _is_object(_resolve(extra, root)):
            return f"mapping of name to {_type(extra, root)}"
        return "mapping"
    return kind or "any"


def _range(node: Mapping[str, Any]) -> list[str]:
    """A number's or a string's bounds, as code spans ``>= 0``, ``> 0``, ``<= 1``, ..."""
    out = [_code(f"{op} {_flow(node[key])}") for key, op in
           (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
            ("exclusiveMaximum", "<")) if key in node]
    if "minLength" in node:
        n = node["minLength"]
        out.append("not empty" if n == 1 else f"at least {n} characters")
    if "pattern" in node:
        out.append(f"matches {_code(node['pattern'])}")
    return out


def _allowed(node: Mapping[str, Any], root: Mapping[str, Any]) -> str:
    """The allowed-values column: choices, bounds, list lengths, required keys."""
    node = _resolve(node, root)
    if "oneOf" in node:
        parts = [_allowed(branch, root) for branch in node["oneOf"]]
        return "; or ".join(p for p in parts if p)
    out: list[str] = []
    if "enum" in node:
        out.append(", ".join(_code(_flow(v)) for v in node["enum"]))
    out += _range(node)
    if node.get("type") == "array":
        low, high = node.get("minItems"), node.get("maxItems")
        if low is not None and low == high:
            out.append(f"{low} items")
        elif low is not None and high is not None:
            out.append(f"{low} to {high} items")
        elif low is not None:
            out.append(f"at least {low} item{'s' if low > 1 else ''}")
        elif high is not None:
            out.append(f"at most {high} items")
        if node.get("uniqueItems"):
            out.append("unique")
        items = node.get("items")
        if isinstance(items, Mapping) and not _is_object(_resolve(items, root)):
            inner = _allowed(items, root)
            if inner:
                out.append(f"each {inner}")
    if _is_object(node):
        if "minProperties" in node:
            out.append(f"at least {node['minProperties']} entr"
                       f"{'ies' if node['minProperties'] > 1 else 'y'}")
        names = node.get("propertyNames", {}).get("pattern")
        if names:
            out.append(f"names match {_code(names)}")
        if node.get("required"):
            out.append("needs " + ", ".join(_code(k) for k in node["required"]))
        extra = node.get("additionalProperties")
        if isinstance(extra, Mapping) and not _is_object(_resolve(extra, root)):
            inner = _allowed(extra, root)
            if inner:
                out.append(f"values {inner}")
    return ", ".join(out)


def _walk(node: Mapping[str, Any], path: str, required: bool,
          root: Mapping[str, Any]) -> Iterator[Row]:
    """The row of ``node`` (unless it is the top level) and those of every key below it."""
    node = _resolve(node, root)
    if path:
        default = _code(_flow(node["default"])) if "default" in node else \
            ("required" if required else "")
        yield Row(path, _type(node, root), default, _allowed(node, root),
                  str(node.get("description", "")).strip())
    prefix = f"{path}." if path else ""
    needed = set(node.get("required", ()))
    for key, sub in node.get("properties", {}).items():
        yield from _walk(sub, prefix + key, key in needed, root)
    entries = _entries(node, root)
    if entries is not None:
        yield from _walk(entries, prefix + NAME, False, root)
    if node.get("type") == "array" and isinstance(node.get("items"), Mapping):
        items = _resolve(node["items"], root)
        if _is_object(items):
            needed = set(items.get("required", ()))
            for key, sub in items.get("properties", {}).items():
                yield from _walk(sub, f"{path}[].{key}", key in needed, root)


def rows(schema: Mapping[str, Any] | None = None) -> list[Row]:
    """Every key of the configuration, in schema order (a section's keys after its own row)."""
    schema = load_schema() if schema is None else schema
    return list(_walk(schema, "", False, schema))


def keys_without_description(schema: Mapping[str, Any] | None = None) -> list[str]:
    """Paths of the keys whose schema node has no description (should be none)."""
    return [row.path for row in rows(schema) if not row.description]


def _cell(text: str) -> str:
    """``text`` safe in a Markdown table cell: no pipes, no line breaks, and no ``<Word``
    outside code spans (Markdown would read an HTML tag)."""
    out, code = [], False
    for part in text.replace("|", "\\|").replace("\n", " ").split("`"):
        out.append(part if code else TAG.sub("&lt;", part))
        code = not code
    return "`".join(out)


def _table(section: list[Row]) -> list[str]:
    lines = ["| key | type | default | allowed | description |", "| --- | --- | --- | --- | --- |"]
    for row in section:
        cells = [_code(row.path), row.type, row.default, row.allowed, row.description]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def render(schema: Mapping[str, Any] | None = None) -> str:
    """The text of ``config/README.md``: the introduction, then one table per section (the
    top-level keys that are no mapping first, then each mapping of the schema in its order)."""
    schema = load_schema() if schema is None else schema
    every = rows(schema)
    sections: dict[str, list[Row]] = {}
    top: list[Row] = []
    for row in every:
        head = row.path.split(".")[0].split("[")[0]
        top_node = _resolve(schema["properties"][head], schema)
        if _is_object(top_node):
            sections.setdefault(head, []).append(row)
        else:
            top.append(row)
    lines = [INTRO, GENERATED_NOTE.format(command=COMMAND), "",
             "## Top-level keys", "", *_table(top)]
    for head, section in sections.items():
        lines += ["", f"## `{head}`", "", *_table(section)]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Print :func:`render` (redirect it into ``config/README.md``)."""
    print(render(), end="")


if __name__ == "__main__":
    main()
