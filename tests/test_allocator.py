"""The allocator settings the command line applies before any training step."""

from __future__ import annotations

import ctypes
import platform

import pytest

from exbl_core import allocator, cli


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's settings are glibc's")
def test_glibc_takes_every_setting():
    assert allocator.keep_freed_memory() is True


def test_elsewhere_nothing_is_changed_and_it_says_so(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False


def test_a_c_library_without_mallopt_is_left_alone(monkeypatch):
    class NoMallopt:
        def __init__(self, _name):
            pass

    monkeypatch.setattr(ctypes, "CDLL", NoMallopt)
    assert allocator.keep_freed_memory() is False


def test_the_command_line_applies_them_first(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append("set") or True)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert calls == ["set"]
