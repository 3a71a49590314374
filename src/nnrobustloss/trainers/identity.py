"""What a checkpoint says it is, and the checks made before its weights are used.

Every checkpoint this package writes records, under ``checkpoint["nnrobustloss"]["identity"]``,
the trainer class, the method, a digest of its settings (hyper-parameters, schedule, epochs,
seed: a replicate differs by its seed), the plans identifier with a digest of the plans
configuration the network was built from, the configuration and the fold
(:func:`checkpoint_identity`). Checkpoints written before the identity existed are described by
what nnU-Net and :mod:`nnrobustloss.trainers.resume` stored anyway (``trainer_name``,
``init_args``, the settings): :func:`identity_of` reads both.

Resuming (``checkpoint_latest.pth``), taking a finished training as done
(``checkpoint_final.pth``), starting from the shared warm-up and predicting read the file with
:func:`read_checkpoint` (one line naming the file when it is truncated or not a checkpoint) and
compare it with the job (:func:`check_identity`): a mismatch is one line naming the file, what
differs and what to do, never a resumed or served model of another run (docs/faults.md).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nnrobustloss.errors import ConfigError, InputDataError
from nnrobustloss.methods import MethodSpec
from nnrobustloss.trainers.resume import CHECKPOINT_KEY

IDENTITY_KEY = "identity"
"""Key of the identity inside a checkpoint's ``CHECKPOINT_KEY`` dict."""

_MISSING = object()  # an option that one settings dict lacks differs from any value


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plans_digest(plans: Mapping[str, Any], configuration: str) -> str:
    """16 hex digits identifying the network a plans dict builds for ``configuration``: its
    plans name and that configuration's entry (architecture, patch size, normalisation)."""
    conf = dict(plans.get("configurations", {}).get(configuration, {}))
    return _digest({"plans_name": plans.get("plans_name"), "configuration": conf})


def checkpoint_identity(trainer_name: str, settings: Mapping[str, Any],
                        plans: Mapping[str, Any], configuration: str,
                        fold: int, replicate: int | None = None) -> dict[str, Any]:
    """The identity recorded in a checkpoint: trainer class, method, settings digest (of
    ``TrainerSettings.to_dict()``), epochs, seed, plans identifier and digest, configuration,
    fold and the final training's replicate (None for a tuning trial, a warm-up or a training
    started from Python without one)."""
    return {"trainer": trainer_name, "method": settings.get("method"),
            "settings_sha256": _digest(dict(settings)), "epochs": settings.get("num_epochs"),
            "seed": settings.get("seed"), "plans_identifier": plans.get("plans_name"),
            "plans_sha256": plans_digest(plans, configuration),
            "configuration": configuration, "fold": int(fold),
            "replicate": None if replicate is None else int(replicate)}


def identity_of(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The identity of a loaded checkpoint: the recorded one, else the one derived from the keys
    older checkpoints hold; None for a checkpoint that is not a trainer's of this package."""
    extra = checkpoint.get(CHECKPOINT_KEY)
    if not isinstance(extra, Mapping) or "settings" not in extra:
        return None
    if isinstance(extra.get(IDENTITY_KEY), Mapping):
        return dict(extra[IDENTITY_KEY])
    init = checkpoint.get("init_args") or {}
    if "plans" not in init:
        return None
    return checkpoint_identity(str(checkpoint.get("trainer_name")), extra["settings"],
                               init["plans"], init.get("configuration", ""), init.get("fold", -1))


def read_checkpoint(path: str | os.PathLike[str], redo: str) -> dict[str, Any]:
    """Load checkpoint ``path`` on the CPU (memory-mapped: the weights are read only when used).

    ``redo`` says what deleting it costs (e.g. "the training starts again from epoch 0").
    InputDataError naming the file when it is missing, truncated (a kill or a full disk while
    it was written) or not a checkpoint of this package's trainers.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise InputDataError(f"{p}: checkpoint not found. Run the stage that writes it first.")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False, mmap=True)
    except Exception as e:  # zero bytes, cut short, or another format
        size = p.stat().st_size
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        reason = "empty" if size == 0 else text.split(". ")[0][:120]  # PyTorch's first sentence
        raise InputDataError(f"{p}: unreadable checkpoint ({size} bytes; {reason}): "
                             f"cut short by a kill or a full disk, or not a checkpoint. Delete "
                             f"it and rerun; {redo}.") from e
    if not isinstance(ckpt, dict) or "network_weights" not in ckpt:
        raise InputDataError(f"{p}: not a checkpoint of an nnU-Net trainer (no network_weights). "
                             f"Delete it and rerun; {redo}.")
    return ckpt


def settings_diff(old: Mapping[str, Any], new: Mapping[str, Any], spec: MethodSpec,
                  ignore: tuple[str, ...] = (), shared_options_only: bool = False) -> list[str]:
    """Sorted keys whose values differ between two ``TrainerSettings.to_dict()`` dicts, except
    ``ignore`` and the options of ``spec`` that change no result (``MethodOption.results``);
    options are compared one by one (named ``section.key``), with ``shared_options_only`` only
    those that both dicts hold (a warm-up of another method of the family). Each entry reads
    ``key (old -> new)``."""
    skip = set(ignore) | {"options"} | {o.name for o in spec.options if not o.results}
    out = [f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in sorted(set(old) | set(new))
           if k not in skip and old.get(k) != new.get(k)]
    old_opts, new_opts = dict(old.get("options") or {}), dict(new.get("options") or {})
    names = set(old_opts) & set(new_opts) if shared_options_only else set(old_opts) | set(new_opts)
    for n in sorted(names - skip):
        a, b = old_opts.get(n, _MISSING), new_opts.get(n, _MISSING)
        if a != b:
            out.append(f"{n} ({'unset' if a is _MISSING else repr(a)} -> "
                       f"{'unset' if b is _MISSING else repr(b)})")
    return out


def check_identity(checkpoint: Mapping[str, Any], path: str | os.PathLike[str], *,
                   spec: MethodSpec, plans: Mapping[str, Any] | None, configuration: str,
                   fold: int, settings: Mapping[str, Any] | None, todo: str,
                   ignore: tuple[str, ...] = (), shared_options_only: bool = False,
                   methods: tuple[str, ...] | None = None,
                   replicate: int | None = None) -> None:
    """ConfigError naming ``path`` unless ``checkpoint`` was written by a training of
    ``spec`` (or of one of ``methods``) with these plans (None: not compared), configuration,
    fold and settings (``TrainerSettings.to_dict()``; None: not compared; ``ignore`` and
    ``shared_options_only`` as in :func:`settings_diff`) and, when both it and the checkpoint
    know one, replicate. ``todo`` ends the message (what to delete and rerun, and what that
    costs)."""
    ident = identity_of(checkpoint)
    if ident is None:
        raise ConfigError(f"{path}: a checkpoint without nnRobustLoss's settings (not written by "
                          f"this package's trainers). {todo}")
    allowed = methods or (spec.id,)
    problems = []
    if ident.get("method") not in allowed:
        problems.append(f"it belongs to method {ident.get('method')} "
                        f"({ident.get('trainer')}), not {' or '.join(allowed)}")
    elif methods is None and ident.get("trainer") != spec.trainer_name:
        problems.append(f"trainer {ident.get('trainer')}, not {spec.trainer_name}")
    if ident.get("fold") != int(fold):
        problems.append(f"fold {ident.get('fold')}, not {fold}")
    if None not in (replicate, ident.get("replicate")) and ident["replicate"] != replicate:
        problems.append(f"replicate {ident['replicate']}, not {replicate}")
    if ident.get("configuration") != configuration:
        problems.append(f"configuration {ident.get('configuration')}, not {configuration}")
    if plans is not None and ident.get("plans_sha256") != plans_digest(plans, configuration):
        problems.append(f"other plans ({ident.get('plans_identifier')} as planned when it was "
                        "trained; the network no longer matches the current plans)")
    if settings is not None and not problems:
        old = checkpoint[CHECKPOINT_KEY]["settings"]
        diff = settings_diff(old, settings, spec, ignore=ignore,
                             shared_options_only=shared_options_only)
        if diff:
            problems.append(f"other settings: {', '.join(diff)}")
    if problems:
        raise ConfigError(f"{path}: written by another training ({'; '.join(problems)}). {todo}")


__all__ = ["IDENTITY_KEY", "check_identity", "checkpoint_identity", "identity_of",
           "plans_digest", "read_checkpoint", "settings_diff"]
