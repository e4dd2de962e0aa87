"""The registry contract of issue 3, checked across every mixer at once.

Per-family files test each mixer against its float64 reference and
``test_contract.py`` the Mixer contract for all of them; this file checks the
names outside code relies on and the docs table.
"""

import pathlib

import pytest

from seqjax import mixers

# The founding papers' names (issue 3): they must stay. New mixers need no entry
# here; test_contract.py's table and docs/mixers.md list every registered mixer.
FOUNDING = {
    # attention family
    "mha", "sliding_window", "linear_attention", "performer", "retnet", "gla", "aaren", "ngram",
    # state-space family
    "lssl", "s4", "s4d", "s5", "lru", "mamba", "mamba2", "hydra",
    # recurrent family
    "lstm", "gru", "slstm", "mlstm",
}  # fmt: skip
DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "mixers.md"


def test_the_founding_names_are_registered():
    assert FOUNDING <= set(mixers.names())
    assert mixers.names() == sorted(mixers.names())


def test_unknown_name_lists_allowed():
    with pytest.raises(ValueError, match=r"unknown mixer 'mamba3'.*allowed: .*mamba2"):
        mixers.get("mamba3")


def test_docs_have_one_row_per_mixer():
    rows = [line for line in DOCS.read_text().splitlines() if line.startswith("| `")]
    documented = [line.split("`")[1] for line in rows]
    assert sorted(documented) == mixers.names(), "docs/mixers.md rows differ from the registry"
