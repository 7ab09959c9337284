"""The documentation site builds in strict mode: a broken link, a missing page or an API reference to a name
that does not exist fails the build (and so this test)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_docs_site_builds_in_strict_mode(tmp_path):
    pytest.importorskip("mkdocs", reason='the docs site needs the [docs] extra: pip install -e ".[docs]"')
    pytest.importorskip("mkdocstrings")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    site = tmp_path / "site"
    for page in ("index.html", "getting-started/index.html", "methods/index.html", "reference/policies/index.html"):
        assert (site / page).is_file(), page
    # the API reference is generated from the docstrings, not written by hand
    assert "SparseSACPolicy" in (site / "reference/policies/index.html").read_text()
    assert "RegrowthOptions" in (site / "reference/topology/index.html").read_text()
