"""Small helpers on nested mappings, shared by the config loader and the cost model (a leaf module:
it imports no other nnrobustloss module)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def deep_update(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: mappings are merged key by key, everything else is replaced."""
    out = copy.deepcopy(dict(base))
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out
