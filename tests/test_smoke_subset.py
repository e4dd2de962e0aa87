"""The smoke subset listed in tests/conftest.py (``pytest -m smoke``) names existing tests."""


def test_every_smoke_entry_matches_a_test(request):
    stale = request.config.smoke_stale
    assert not stale, f"entries of SMOKE in tests/conftest.py that match no test: {stale}"
