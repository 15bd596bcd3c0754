"""progress.working: a line for a step of unknown length, only when it lasts."""

from __future__ import annotations

import time

import pytest

from numallm.progress import working


def test_a_long_step_is_named_on_stderr(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NUMALLM_PROGRESS", "1")
    with working("compiling the forward pass", after_s=0.05):
        time.sleep(0.3)
    assert "compiling the forward pass: 00:00" in capsys.readouterr().err


def test_a_short_step_shows_nothing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NUMALLM_PROGRESS", "1")
    with working("compiling the forward pass", after_s=5.0):
        pass
    assert capsys.readouterr().err == ""


def test_off_shows_nothing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NUMALLM_PROGRESS", "0")
    with working("compiling the forward pass", after_s=0.0):
        time.sleep(0.1)
    assert capsys.readouterr().err == ""
