"""A peer library missing in CI is an error; on a developer's machine it skips."""

import pytest

from tests.peers import peer


def test_a_missing_peer_fails_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(ImportError, match="CI requires the peer library 'no_such_peer_xyz'"):
        peer("no_such_peer_xyz")


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_a_missing_peer_skips_outside_ci(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception):
        peer("no_such_peer_xyz")


def test_an_installed_peer_is_the_module(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert peer("json").dumps([1]) == "[1]"
