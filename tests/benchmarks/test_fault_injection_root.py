"""``make fault-injection-root`` refuses where it cannot mount: CI runs unprivileged, and the
in-process ``ENOSPC`` suite (``tests/job/test_fault_injection.py``) holds the same write points there."""

from __future__ import annotations

import sys

import pytest

from benchmarks import fault_injection_root


def test_without_root_it_says_why_and_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(fault_injection_root.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(sys, "argv", ["fault_injection_root"])
    with pytest.raises(SystemExit) as exit_:
        fault_injection_root.main()
    assert exit_.value.code == 2
    assert "needs root, to mount a tmpfs (CI runs tests/job/test_fault_injection.py instead)" in capsys.readouterr().out
