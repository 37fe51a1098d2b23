"""The documentation: the site builds with warnings as errors; cited math anchors exist."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MATH = ROOT / "docs" / "math.md"
README = ROOT / "README.md"


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


def test_readme_is_short_and_gives_the_ci_command_first() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    commands = [line.strip() for line in text.splitlines()[:15] if line.startswith("    ")]
    assert commands[1] == ci_command, "the README's test command must be what .ci/run runs"
    assert "mi-losses-minilm fit --config configs/minilm/fit.yaml" in commands[0]
    assert not re.search(r"\bcommit [0-9a-f]{7}", text), "no development history in the README"


def test_readme_links_point_to_files() -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text()):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), f"README links to a missing file: {target}"


def test_readme_quickstart_runs(tmp_path: Path) -> None:
    (code,) = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    script = tmp_path / "quickstart.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "mutual_information_loss" in result.stdout


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
