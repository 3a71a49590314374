"""The convert stage: a task's config -> its noisy and reference nnU-Net raw datasets."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nnrobustloss.datasets.base import SourceCase
from nnrobustloss.datasets.phantom import PHANTOM_DEFAULTS, phantom_source
from nnrobustloss.datasets.raw import RawDatasets, write_raw_datasets
from nnrobustloss.datasets.sources import folder_source, kits23_source, mmwhs_source
from nnrobustloss.errors import ConfigError

SOURCE_TYPES = ("phantom", "kits23", "mmwhs", "folder")


def _label_map(cfg: Mapping[str, Any]) -> dict[int, int] | None:
    lm = cfg.get("label_map")
    return None if lm is None else {int(k): int(v) for k, v in lm.items()}


def source_cases(task: str, sources: list[Mapping[str, Any]], seed: int) -> list[SourceCase]:
    """All cases of a task's sources, in config order (each source's cases sorted by id)."""
    cases: list[SourceCase] = []
    for i, src in enumerate(sources):
        kind = src.get("type")
        where = f"tasks.{task}.sources[{i}]"
        if kind == "phantom":
            given = {k: src[k] for k in PHANTOM_DEFAULTS if k in src}
            cases += phantom_source(**given, seed=seed)
            continue
        if kind not in SOURCE_TYPES:
            raise ConfigError(f"{where}.type: unknown source type {kind!r}; use one of "
                              f"{', '.join(SOURCE_TYPES)}.")
        path = src.get("path")
        if not path:
            raise ConfigError(f"{where}.path: no data path given for the {kind} source. Set it, "
                              f"e.g. --config 'tasks={{{task}: {{sources: [{{path: ...}}]}}}}' "
                              "or in an overlay --configfile.")
        prefix = str(src.get("case_prefix", ""))
        if kind == "kits23":
            cases += kits23_source(path, case_prefix=prefix)
        elif kind == "mmwhs":
            cases += mmwhs_source(path, case_prefix=str(src.get("case_prefix", "mmwhs_")),
                                  label_map=_label_map(src))
        else:
            cases += folder_source(path, case_prefix=prefix, label_map=_label_map(src))
    return cases


def convert_task(task: str, task_cfg: Mapping[str, Any], results_dir: str | os.PathLike[str],
                 seed: int = 0, manifest: str | os.PathLike[str] | None = None) -> RawDatasets:
    """Convert one task (its ``tasks.<Task>`` config) into ``<results_dir>/raw`` and ``reference``,
    with the manifest ``manifest`` when given, all committed as a whole
    (:func:`nnrobustloss.datasets.raw.write_raw_datasets`)."""
    root = Path(results_dir)
    cases = source_cases(task, list(task_cfg["sources"]), seed)
    return write_raw_datasets(
        task, cases, dataset_id=int(task_cfg["dataset_id"]),
        reference_dataset_id=int(task_cfg["reference_dataset_id"]), labels=task_cfg["labels"],
        raw_root=root / "raw", reference_root=root / "reference",
        channel=str(task_cfg.get("channel", "MRI")), noise=task_cfg.get("noise"), seed=seed,
        manifest=manifest)
