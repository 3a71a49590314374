"""A method's trainer class: imported, checked and wrapped (docs/packages.md).

The method registry (:mod:`nnrobustloss.methods`) is data: it stores each method's trainer as an
import path ``"module:ClassName"`` (or the class) and imports no trainer, so that the Snakefile,
the config validation and the cost plan read it without nnU-Net, and the trainers read their
settings from it. This module sits above both: it resolves a registered method to its
``nnUNetTrainer`` subclass (:func:`load_trainer_class`, :func:`trainer_by_name`), wraps a plain
nnU-Net trainer in :class:`~nnrobustloss.trainers.base.RobustTrainer`
(:func:`wrapped_trainer`), and imports and checks the trainers of the config's
``custom_methods`` before adding them to the registry (:func:`register_custom_methods`).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnrobustloss.errors import ConfigError
from nnrobustloss.methods import (
    METHODS,
    MethodSpec,
    add_custom_methods,
    custom_key,
    custom_spec,
    get_method,
)
from nnrobustloss.trainers.base import RobustTrainer
from nnrobustloss.trainers.coteaching import CoTeachingTrainer


def load_trainer_class(method: str | MethodSpec) -> type:
    """Import and return the ``nnUNetTrainer`` subclass of ``method`` (a spec or a registered
    id); a plain nnU-Net trainer comes wrapped (:func:`wrapped_trainer`). ConfigError when the
    method is unknown, the import fails or the class is not an ``nnUNetTrainer``."""
    spec = method if isinstance(method, MethodSpec) else get_method(method)
    cls = spec.trainer_class if isinstance(spec.trainer_class, type) \
        else import_trainer(spec.trainer_class)
    return wrapped_trainer(cls)


def trainer_by_name(name: str) -> type | None:
    """The trainer class called ``name`` of a registered method (as a checkpoint's
    ``trainer_name`` records it), or None when no registered method uses such a trainer."""
    for spec in METHODS.values():
        if spec.trainer_name == name:
            return load_trainer_class(spec)
    return None


def is_robust(cls: type) -> bool:
    """Whether ``cls`` is one of our trainers (a ``RobustTrainer`` subclass)."""
    return issubclass(cls, RobustTrainer)


def import_trainer(path: str, key: str = "trainer") -> type:
    """The class of ``module:Class`` or ``/abs/file.py:Class``; ConfigError naming ``key`` if
    it cannot be imported or is not an ``nnUNetTrainer`` subclass."""
    where, name = path.rsplit(":", 1)
    try:
        if where.endswith(".py"):
            module_name = f"nnrobustloss_custom_{Path(where).stem}"
            module = sys.modules.get(module_name)
            if module is None or getattr(module, "__file__", None) != where:
                spec = importlib.util.spec_from_file_location(module_name, where)
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
        cls = getattr(module, name)
    except Exception as e:  # noqa: BLE001 (any import failure is the user's file)
        why = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        raise ConfigError(f"{key}: {path}: cannot be imported ({type(e).__name__}: {why}). Fix "
                          "the import path or the module.") from None
    if not (isinstance(cls, type) and issubclass(cls, nnUNetTrainer)):
        raise ConfigError(f"{key}: {path}: {name} is not a subclass of nnunetv2's "
                          "nnUNetTrainer.")
    return cls


_WRAPPED: dict[type, type] = {}


def wrapped_trainer(cls: type) -> type:
    """``cls`` itself when it subclasses our ``RobustTrainer``, else a subclass of
    (``RobustTrainer``, ``cls``) with ``cls``'s name: the plain nnU-Net trainer's loss, network
    and optimiser with our settings, ``progress.csv``, ``settings.json``, resume and checkpoint
    schedule (``RobustTrainer``'s overrides come first). The same name is recorded in its
    checkpoints, so stock nnU-Net finds ``cls`` for prediction. One class per ``cls``."""
    if is_robust(cls):
        return cls
    if cls not in _WRAPPED:
        _WRAPPED[cls] = type(cls.__name__, (RobustTrainer, cls),
                             {"__module__": cls.__module__, "__doc__": cls.__doc__,
                              "__qualname__": cls.__qualname__})
    return _WRAPPED[cls]


def checked_custom_spec(method: str, definition: Mapping[str, Any]) -> MethodSpec:
    """The :class:`MethodSpec` of ``custom_methods.<method>``
    (:func:`nnrobustloss.methods.custom_spec`) with its trainer imported and checked;
    ConfigError (one line naming the key) for a failing import, a class that is not an
    ``nnUNetTrainer``, a two-peer method whose class is not a ``CoTeachingTrainer``, a search
    space on a plain nnU-Net trainer (which reads no hyper-parameters)."""
    spec = custom_spec(method, definition)
    cls = import_trainer(spec.trainer_class, custom_key(method, "trainer"))
    if spec.peers == 2 and not issubclass(cls, CoTeachingTrainer):
        raise ConfigError(f"{custom_key(method, 'peers')}: 2 needs a subclass of "
                          "nnrobustloss.trainers.CoTeachingTrainer; "
                          f"{spec.trainer_name} trains one network.")
    if spec.search_space and not is_robust(cls):
        raise ConfigError(f"{custom_key(method, 'search_space')}: {spec.trainer_name} is a "
                          "plain nnU-Net trainer and reads no hyper-parameters; subclass "
                          "nnrobustloss.trainers.RobustTrainer to read self.settings.params.")
    return spec


def register_custom_methods(definitions: Mapping[str, Mapping[str, Any]] | None
                            ) -> dict[str, MethodSpec]:
    """Check the config's ``custom_methods`` (:func:`checked_custom_spec`; none is added when
    one fails), add them to :data:`~nnrobustloss.methods.METHODS` (after the built-in ones; a
    method registered again is replaced) and return their specs by id. Every process that
    handles a custom method calls this with the definitions its stage params carry
    (:func:`nnrobustloss.pipeline.register_methods`); the config validation calls it too."""
    specs = {m: checked_custom_spec(m, d) for m, d in (definitions or {}).items()}
    add_custom_methods(specs)
    return specs
