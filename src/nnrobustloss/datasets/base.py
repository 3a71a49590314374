"""The common form in which every data source hands its cases to the converter."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import SimpleITK as sitk


@dataclass
class CaseData:
    """One case loaded into memory.

    ``image`` is the (single-channel) intensity image; ``reference`` the reference labels;
    ``noisy`` the labels used for training, or ``None`` when the task derives them by
    synthetic noise (KiTS23). ``files`` names the file behind each role ("image", "reference",
    "noisy") so that a validation error can name it. Label images hold the task's label values
    (0 = background). All three share one geometry (size, spacing, origin, direction).
    """

    image: sitk.Image
    reference: sitk.Image
    noisy: sitk.Image | None
    files: dict[str, str] = field(default_factory=dict)  # role -> path, for error messages


@dataclass(frozen=True)
class SourceCase:
    """A case of a data source: its id, where it comes from (for messages) and a loader.

    ``case_id`` is unique within a task and safe as a file name. ``origin`` names the file or
    folder the case was read from (used in error messages). ``load`` reads the case lazily.
    """

    case_id: str
    origin: str
    load: Callable[[], CaseData]
