"""The fork server's environment variables: ``CORRAL_FORKSERVER_*``, old names deprecated."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from corral import Host
from corral._sandbox.forkserver.daemon import idle_seconds
from corral._sandbox.forkserver.settings import forkserver_env


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CORRAL_FORKSERVER_SHARED", "CORRAL_SHARED_FORKSERVER"):
        monkeypatch.delenv(name, raising=False)


def test_the_current_name_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_FORKSERVER_SHARED", "0")
    assert forkserver_env("SHARED") == "0"


def test_unset_is_none() -> None:
    assert forkserver_env("SHARED") is None


def test_the_old_name_still_works_with_a_deprecation_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CORRAL_SHARED_FORKSERVER", "0")
    with pytest.warns(DeprecationWarning, match="CORRAL_FORKSERVER_SHARED"):
        assert forkserver_env("SHARED") == "0"


def test_the_current_name_wins_without_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_SHARED_FORKSERVER", "0")
    monkeypatch.setenv("CORRAL_FORKSERVER_SHARED", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert forkserver_env("SHARED") == "1"


def test_idle_seconds_reads_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_FORKSERVER_IDLE", "7")
    assert idle_seconds() == 7.0
    monkeypatch.setenv("CORRAL_FORKSERVER_IDLE", "nonsense")
    assert idle_seconds() == 600.0


def test_a_cli_host_honours_the_old_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_SHARED_FORKSERVER", "0")
    with Host(home=tmp_path / "home", shared_fork_server=True) as host:
        with pytest.warns(DeprecationWarning, match="CORRAL_SHARED_FORKSERVER"):
            sup = host.attachments.supervisor()
        assert sup._forkserver._shared_dir is None  # a private fork server
