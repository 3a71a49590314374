"""Lazy re-exports of a package's names (PEP 562), for the ``__init__`` of :mod:`nnrobustloss.metrics`
and :mod:`nnrobustloss.report`: a name is imported from its defining submodule when it is first
asked for, so that a light submodule can be imported without the heavy ones. A leaf module."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(package: str, namespace: dict[str, Any], exports: Mapping[str, Sequence[str]]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` of ``package`` (its ``__name__`` and ``globals()``) that
    re-export the names of ``exports`` (``{submodule: names}``) on first use."""
    submodule_of = {name: module for module, names in exports.items() for name in names}

    def getattr_(name: str) -> Any:
        if name not in submodule_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{submodule_of[name]}"), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(submodule_of))

    return getattr_, dir_
