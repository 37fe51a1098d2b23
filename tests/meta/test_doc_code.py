"""Docs are code: every ```` ```python ```` block of README.md and docs/*.md runs.

A page's blocks run in order in one namespace (a later block uses what an earlier one made), in
a fresh temporary directory, with ``UserWarning`` as an error. Every ``.md`` under ``docs/`` is
picked up by itself: a new page is tested the day it is added.

Two HTML comments, invisible on GitHub and on the site, mark what is not run as shown (the
spellings of sybil's markdown parser, so the pages read the same if the project adopts it):

- ``<!-- skip: next -->`` on the line before a block: a deliberate fragment (it needs a model
  on disk, a cluster, ...); it is not run.
- ``<!-- invisible-code-block: python`` ... ``-->``: code that runs in the page's namespace at
  that point without being shown, e.g. small tensors for a block that uses ``mu`` and ``sigma``
  as the prose around it defines them.

A failure names the page and the line of the block in the Markdown file.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

SKIP = "<!-- skip: next -->"
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
_INVISIBLE = re.compile(
    r"^<!-- invisible-code-block: python[ \t]*\n(.*?)^-->", re.DOTALL | re.MULTILINE
)


class Block(NamedTuple):
    """One piece of Python of a page: its code, the line it starts on, whether it is run."""

    code: str
    line: int
    skipped: bool


def blocks(text: str) -> list[Block]:
    """The page's Python blocks (shown and invisible) in the order they appear."""
    found = []
    for pattern in (_FENCE, _INVISIBLE):
        for match in pattern.finditer(text):
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            line = text.count("\n", 0, match.start(1)) + 1
            found.append((match.start(), Block(match.group(1), line, before.strip() == SKIP)))
    return [block for _, block in sorted(found, key=lambda item: item[0])]


def test_blocks_finds_fences_markers_and_lines() -> None:
    page = (
        "text\n```python\na = 1\n```\n<!-- skip: next -->\n```python\nb\n```\n"
        "<!-- invisible-code-block: python\nc = 2\n-->\n```yaml\nd: 1\n```\n```python\ne = c\n```\n"
    )
    assert blocks(page) == [
        Block("a = 1\n", 3, False),
        Block("b\n", 7, True),
        Block("c = 2\n", 10, False),
        Block("e = c\n", 16, False),
    ]


def run_page(path: Path) -> None:
    """Run the page's blocks in order in one namespace; a failure names the page and line."""
    namespace: dict[str, object] = {"__name__": "__doc_page__"}
    for block in blocks(path.read_text()):
        if block.skipped:
            continue
        # Blank lines in front keep the Markdown file's line numbers in tracebacks.
        code = compile("\n" * (block.line - 1) + block.code, str(path), "exec")
        exec(code, namespace)


def test_run_page_reports_the_markdown_line(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# t\n\n```python\nx = 1\n```\n\n```python\ny = x + 1\nraise KeyError(y)\n```\n"
    )
    with pytest.raises(KeyError) as info:
        run_page(page)
    assert info.value.args == (2,)
    assert info.traceback[-1].path == page and info.traceback[-1].lineno + 1 == 9


def _runs_code(path: Path) -> bool:
    return any(not block.skipped for block in blocks(path.read_text()))


@pytest.mark.parametrize(
    "path", [page for page in PAGES if _runs_code(page)], ids=lambda path: path.name
)
def test_page_code_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # whatever a block writes stays out of the checkout
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        run_page(path)


def test_pages_with_code_are_tested() -> None:
    """The collection sees the pages that show code (a typo in a pattern would run nothing)."""
    assert {"README.md", "guide.md", "distributed.md"} <= {p.name for p in PAGES if _runs_code(p)}
