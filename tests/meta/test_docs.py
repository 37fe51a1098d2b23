"""The documentation: the site builds with warnings as errors; every link of the built site
(docstrings included) reaches an existing page and anchor; cited math anchors exist."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

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
    assert "mi-losses-hf fit --config configs/hf/minilm.yaml" in commands[0]
    assert not re.search(r"\bcommit [0-9a-f]{7}", text), "no development history in the README"


def test_readme_links_point_to_files() -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text()):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), f"README links to a missing file: {target}"


RAW_MATH = re.compile(
    r"\.\. math::|:math:|\$\$|\\(?:frac|sum|log|exp|sigma|mu|mathcal|left|right|operatorname"
    r"|lvert|rvert|begin|end|cdot|le|ge|in|sqrt|text|varepsilon|odot|mid|qquad)(?![a-zA-Z])"
)
"""LaTeX that was not typeset: a reST math directive or role, ``$$``, or a TeX command."""

_HIDDEN = {"code", "pre", "script", "style", "kbd", "samp"}
_VOID = {"br", "hr", "img", "input", "link", "meta", "source", "wbr", "area", "base", "col"}


class _VisibleText(HTMLParser):
    """The text of a page outside code, scripts and arithmatex's wrappers (MathJax's input)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[bool] = []  # per open element: is it (or a parent) hidden?
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID:
            return
        classes = (dict(attrs).get("class") or "").split()
        hidden = tag in _HIDDEN or "arithmatex" in classes
        self.stack.append(hidden or (bool(self.stack) and self.stack[-1]))

    def handle_endtag(self, tag: str) -> None:
        if tag not in _VOID and self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if not (self.stack and self.stack[-1]):
            self.text.append(data)


def raw_math(html: str) -> list[str]:
    """Every piece of untypeset LaTeX in ``html`` (with a little context)."""
    parser = _VisibleText()
    parser.feed(html)
    text = " ".join(parser.text)
    return [text[max(0, m.start() - 30) : m.end() + 30] for m in RAW_MATH.finditer(text)]


def test_raw_math_finds_untypeset_latex_only() -> None:
    assert raw_math(r"<p>x = \frac{a}{b}</p>") and raw_math("<p>.. math:: x</p>")
    assert raw_math(r"<p>$$ x $$</p>") and raw_math(r"<p>the <em>i</em> \sum_j</p>")
    typeset = r'<p>a <span class="arithmatex">\(\frac{a}{b}\)</span> b</p>'
    typeset += r'<div class="arithmatex">\[\sum_j e^{x_j}\]</div><pre><code>\log</code></pre>'
    assert raw_math(typeset) == []


class _Links(HTMLParser):
    """The ids (and ``name`` anchors) of a page, and the targets of its ``<a href>``."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.ids.update(value for key in ("id", "name") if (value := values.get(key)))
        if tag == "a" and (href := values.get("href")):
            self.hrefs.append(href)


def broken_links(site: Path) -> list[str]:
    """Every relative link of the built ``site`` whose page or ``#anchor`` does not exist.

    mkdocs' own ``validation`` sees the links of Markdown pages only; the links in docstrings,
    rendered by mkdocstrings, reach the HTML unchecked. This reads the HTML.
    """
    pages: dict[str, _Links] = {}
    for page in sorted(site.rglob("*.html")):
        parser = _Links()
        parser.feed(page.read_text())
        pages["/" + page.relative_to(site).as_posix()] = parser
    broken = []
    for source, parser in pages.items():
        for href in parser.hrefs:
            url = urlsplit(urljoin(source, href))
            if url.scheme or url.netloc:
                continue  # another site
            path = url.path + "index.html" if url.path.endswith("/") else url.path
            target = pages.get(path)
            if target is None:
                if not (site / path.lstrip("/")).is_file():
                    broken.append(f"{source}: {href} (no such page)")
            elif url.fragment and url.fragment not in target.ids:
                broken.append(f"{source}: {href} (no such anchor)")
    return broken


def test_broken_links_finds_missing_pages_and_anchors(tmp_path: Path) -> None:
    (tmp_path / "math").mkdir()
    (tmp_path / "math" / "index.html").write_text('<h2 id="bounds">Bounds</h2><a href="#top">t</a>')
    (tmp_path / "index.html").write_text(
        '<a id="top" href="math/#bounds">ok</a><a href="math/#bound">typo</a>'
        '<a href="guide/">gone</a><a href="https://example.org/#x">away</a><a href="#top">me</a>'
    )
    assert broken_links(tmp_path) == [
        "/index.html: math/#bound (no such anchor)",
        "/index.html: guide/ (no such page)",
        "/math/index.html: #top (no such anchor)",
    ]


needs_mkdocs = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
    reason="needs the optional extra: pip install -e '.[docs]' (mkdocs-material, mkdocstrings)",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once with warnings as errors (no network: MathJax is only linked)."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.mark.slow
@needs_mkdocs
def test_site_builds_without_warnings(site: Path) -> None:
    api = (site / "api" / "index.html").read_text()
    for name in (
        "mutual_information_sub_batch",
        "SubBatchMutualInformation",
        "ComponentLossLogger",
        "GatherOptions",
    ):
        assert name in api, f"{name} is missing from the API reference"
    assert 'id="mutual-information"' in (site / "math" / "index.html").read_text()
    assert 'id="tensors"' in (site / "glossary" / "index.html").read_text()


@pytest.mark.slow
@needs_mkdocs
def test_every_link_of_the_site_reaches_its_page_and_anchor(site: Path) -> None:
    assert not broken_links(site)


@pytest.mark.slow
@needs_mkdocs
def test_math_is_typeset_on_every_page(site: Path) -> None:
    """Formulas reach MathJax inside arithmatex's wrappers; no raw LaTeX anywhere else."""
    pages = sorted(site.rglob("*.html"))
    found = {str(page.relative_to(site)): raw_math(page.read_text()) for page in pages}
    assert not {page: hits for page, hits in found.items() if hits}
    math_page = (site / "math" / "index.html").read_text()
    assert math_page.count('class="arithmatex"') > 50
    assert "mathjax@3" in math_page and "javascripts/mathjax.js" in math_page


@pytest.mark.slow
@needs_mkdocs
def test_defaults_are_shown_as_values(site: Path) -> None:
    api = (site / "api" / "index.html").read_text()
    assert "DEFAULT_MAX_BLOCK_BYTES" not in api and "DEFAULT_VOCAB_CHUNK_SIZE" not in api
