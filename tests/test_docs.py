"""The documentation: its code runs, its links resolve, its figures come from docs/make_figures.py."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = ["index.md", "quickstart.md", "concepts.md", "custom_ops.md", "math.md", "optimizers.md", "cli.md",
         "benchmarks.md"]
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot binary is not installed")


def python_blocks(page):
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)


def test_every_page_exists_and_is_linked_from_the_index():
    index = (DOCS / "index.md").read_text()
    for page in PAGES:
        assert (DOCS / page).is_file(), page
        if page != "index.md":
            assert f"({page})" in index, f"index.md does not link {page}"


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
    text = (DOCS / page).read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target or target.startswith("../../shared"):
            continue
        assert (DOCS / target).exists(), f"{page} links to missing {target}"


@pytest.mark.parametrize("page", ["quickstart.md", "custom_ops.md"])
def test_python_blocks_run(page, tmp_path):
    """The page's Python blocks, in order, as one script (in a fresh process: they register ops)."""
    code = "\n".join(python_blocks(page))
    assert code.strip()
    script = tmp_path / "page.py"
    script.write_text(code)
    if shutil.which("dot") is None:   # the quickstart draws an SVG at the end; without dot write the source
        script.write_text(code.replace('"hv.svg"', '"hv.dot"'))
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{page}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert "FAIL" not in r.stdout and "False" not in r.stdout


def test_no_placeholders():
    for page in PAGES:
        text = (DOCS / page).read_text()
        assert not re.search(r"\bTODO\b|\bTBD\b|lorem ipsum", text, re.I), page
    assert "Newton-CG" in (DOCS / "optimizers.md").read_text() and "FITRE" in (DOCS / "optimizers.md").read_text()


def test_figures_referenced_by_the_docs_are_committed():
    for page in PAGES:
        for fig in re.findall(r"\((figures/[^)]+)\)", (DOCS / page).read_text()):
            assert (DOCS / fig).is_file() and (DOCS / fig).stat().st_size > 1000, fig


@needs_dot
def test_make_figures_writes_every_committed_figure(tmp_path):
    r = subprocess.run([sys.executable, str(DOCS / "make_figures.py"), str(tmp_path)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    made = {p.name for p in tmp_path.glob("*.svg")}
    committed = {p.name for p in (DOCS / "figures").glob("*.svg")}
    assert {"mlp_hv.svg", "mlp_gv.svg"} <= made
    assert committed <= made | {"small_cnn_hv.svg"}
    for name in made:
        svg = (tmp_path / name).read_text()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg
        if name in committed:   # the committed drawing shows the program the compiler makes today
            assert _labels(svg) == _labels((DOCS / "figures" / name).read_text()), \
                f"docs/figures/{name} is stale: run python docs/make_figures.py"


def _labels(svg):
    """The texts a drawing shows (nodes, kernels' expressions, clusters), whatever graphviz's layout."""
    return sorted(re.findall(r">([^<]*)</text>", svg))
