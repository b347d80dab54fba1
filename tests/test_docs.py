"""The documentation site builds with ``mkdocs build --strict`` (broken links, bad references and
docstrings mkdocstrings cannot render fail it), and the README stays short."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed (the docs extra)")
    pytest.importorskip("material", reason="mkdocs-material is not installed (the docs extra)")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    reference = (tmp_path / "site" / "reference" / "index.html").read_text()
    assert "as_bridge" in reference and "normalized" in reference  # docstrings were rendered


def test_readme_is_short_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name != "index.md":
            assert f"docs/{page.name}" in readme, page.name


def test_mkdocs_is_in_the_docs_and_test_extras():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for package in ("mkdocs>", "mkdocs-material>", "mkdocstrings[python]>"):
        for extra in ("docs", "test"):
            assert any(req.startswith(package) for req in extras[extra]), (package, extra)



def test_the_source_layout_names_every_module():
    layout = (ROOT / "docs" / "performance.md").read_text().split("## Source layout", 1)[1]
    package = ROOT / "src" / "attrscope"
    modules = {p.stem if p.stem != "__init__" else p.parent.name
               for p in package.rglob("*.py") if p.stem not in ("__main__",)}
    modules.discard("attrscope")
    missing = sorted(m for m in modules if m not in layout)
    assert not missing, f"docs/performance.md's source layout does not name {missing}"
