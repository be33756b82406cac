"""docs/ARCHITECTURE.md lists every module of edge/ and export/, and only modules that exist:
a newcomer's map that cannot drift from the tree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def documented(package: str) -> set[str]:
    """The first-column module paths of the tables under `### <package>/`."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split(f"### {package}/", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    return set(re.findall(r"^\| `([\w/]+\.py)` \|", section, flags=re.M))


@pytest.mark.parametrize("package", ["edge", "export"])
def test_every_module_is_documented(package):
    tree = {p.relative_to(ROOT / package).as_posix()
            for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts}
    listed = documented(package)
    assert sorted(tree - listed) == [], f"modules missing from {DOC.name}"
    assert sorted(listed - tree) == [], f"{DOC.name} lists modules that do not exist"
