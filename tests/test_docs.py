"""The design documentation lives in docs/, and every pointer to it resolves.

Docstrings, comments and the README refer to the design as ``docs/<page>.md``. These tests fail
when a file still points to the former outside document (DESIGN.md), when a pointer names a page
that does not exist, or when a relative link between the docs pages is broken. Fast: text only.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
OLD_DOCUMENT = "DESIGN" + ".md"  # split so that this file does not mention it itself
TEXT_SUFFIXES = {".py", ".smk", ".rst", ".yaml", ".yml", ".md", ".txt", ".toml", ".cfg"}
POINTER = re.compile(r"docs/([A-Za-z0-9_.-]+\.md)")
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def _text_files(*names: str) -> list[Path]:
    """The text files of the named files and folders under the repository root."""
    out: list[Path] = []
    for name in names:
        path = ROOT / name
        if path.is_file():
            out.append(path)
        elif path.is_dir():
            out += sorted(p for p in path.rglob("*")
                          if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.name == "Snakefile")
                          and "__pycache__" not in p.parts)
    return out


def test_the_docs_exist():
    assert (DOCS / "README.md").is_file()
    pages = {p.name for p in DOCS.glob("*.md")}
    assert {"layout.md", "methods.md", "tuning.md", "noise.md", "metrics.md",
            "decisions.md"} <= pages


def test_nothing_points_to_the_outside_design_document():
    offenders = [f"{p.relative_to(ROOT)}:{i}"
                 for p in _text_files("src", "workflow", "Snakefile", "README.md")
                 for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                 if OLD_DOCUMENT in line]
    assert not offenders, (f"{OLD_DOCUMENT} is not part of the repository; point to the "
                           f"matching docs/<page>.md instead: {offenders}")


def test_every_docs_pointer_names_an_existing_page():
    files = _text_files("src", "workflow", "Snakefile", "README.md")
    pointers = {(str(p.relative_to(ROOT)), page) for p in files
                for page in POINTER.findall(p.read_text(encoding="utf-8"))}
    assert pointers, "expected docstrings and the README to point to docs/<page>.md"
    missing = sorted(f"{where}: docs/{page}" for where, page in pointers
                     if not (DOCS / page).is_file())
    assert not missing, f"pointers to pages that do not exist: {missing}"


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_relative_links_of_a_docs_page_resolve(page: str):
    text = (DOCS / page).read_text(encoding="utf-8")
    broken = []
    for target, anchor in LINK.findall(text):
        if "://" in target or target.startswith("mailto:"):
            continue
        path = (DOCS / target).resolve()
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor[1:] not in _anchors(path):
            broken.append(target + anchor)
    assert not broken, f"docs/{page}: broken links {broken}"


def _anchors(page: Path) -> set[str]:
    """GitHub-style anchors of a Markdown page's headings."""
    out = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        m = re.match(r"#+\s+(.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out
