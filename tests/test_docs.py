"""The documentation: the site builds with warnings as errors; cited math anchors exist."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MATH = ROOT / "docs" / "math.md"


def _slug(heading: str) -> str:
    """The anchor mkdocs' ``toc`` extension gives a heading (lower case, words joined by -)."""
    words = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"[-\s]+", "-", words).strip("-")


def test_math_anchors_cited_in_the_code_exist() -> None:
    anchors = {
        _slug(line.lstrip("#")) for line in MATH.read_text().splitlines() if line.startswith("#")
    }
    assert {"mutual-information", "bounds", "numerics", "pair-active-sets"} <= anchors
    cited: dict[str, set[str]] = {}
    for path in [*ROOT.glob("mi_losses/**/*.py"), *ROOT.glob("benchmarks/*.py")]:
        for anchor in re.findall(r"docs/math\.md#([\w-]+)", path.read_text()):
            cited.setdefault(anchor, set()).add(str(path.relative_to(ROOT)))
    missing = {anchor: files for anchor, files in cited.items() if anchor not in anchors}
    assert not missing, f"docs/math.md has no section for these anchors: {missing}"


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
    reason="needs the optional extra: pip install -e '.[docs]' (mkdocs-material, mkdocstrings)",
)
def test_site_builds_without_warnings(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    api = (tmp_path / "api" / "index.html").read_text()
    for name in (
        "mutual_information_sub_batch",
        "SubBatchMutualInformation",
        "ComponentLossLogger",
    ):
        assert name in api, f"{name} is missing from the API reference"
    assert 'id="mutual-information"' in (tmp_path / "math" / "index.html").read_text()
