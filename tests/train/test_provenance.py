"""A built (non-editable) install records the commit it was built from; a checkout asks git."""

import subprocess
import sys
import types
from pathlib import Path

import pytest

from seqjax.train import provenance, results

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh_cache():
    results.git_hash.cache_clear()
    results.git_dirty.cache_clear()
    yield
    results.git_hash.cache_clear()
    results.git_dirty.cache_clear()


def test_a_built_install_answers_with_its_embedded_commit(monkeypatch, fresh_cache):
    # Git would answer for whatever repository encloses site-packages; the build's own record wins.
    monkeypatch.setitem(sys.modules, "seqjax._build_commit", types.SimpleNamespace(COMMIT="c0ffee", DIRTY=False))
    monkeypatch.setattr(provenance, "run_git", lambda cwd, *args: "deadbeef\n" if "rev-parse" in args else " M x.py\n")
    assert (results.git_hash(), results.git_dirty()) == ("c0ffee", False)


def test_a_checkout_asks_git(monkeypatch, fresh_cache):
    monkeypatch.setitem(sys.modules, "seqjax._build_commit", None)  # import fails, as in a checkout
    monkeypatch.setattr(provenance, "run_git", lambda cwd, *args: "deadbeef\n" if "rev-parse" in args else "")
    assert (results.git_hash(), results.git_dirty()) == ("deadbeef", False)


def test_build_py_writes_the_commit_it_builds_from(tmp_path):
    # setup.py's build_py (what `pip install .` and `pip install git+...` run) embeds HEAD.
    pytest.importorskip("setuptools")
    head = provenance.commit(ROOT)
    if head is None:
        pytest.skip("not a git checkout")
    out = subprocess.run([sys.executable, "setup.py", "-q", "build_py", f"--build-lib={tmp_path}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    namespace = {}
    exec((tmp_path / "seqjax" / provenance.BUILD_MODULE).read_text(), namespace)
    assert namespace["COMMIT"] == head
    assert namespace["DIRTY"] is provenance.dirty(ROOT)
    assert not (ROOT / "seqjax" / provenance.BUILD_MODULE).exists()  # the checkout itself is left alone
