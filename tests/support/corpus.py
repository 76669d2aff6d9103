"""Real-world captures for the tests that want them.

FLOWPROBE_CORPUS names a folder of .pcap/.pcapng files, searched
recursively (CI points it at the project's corpus of nDPI and tcpdump test
captures). Without it those tests skip, each with a reason that says how to
get real captures, and the run ends with one line saying so. A variable
that names a folder without captures is an error, not a skip.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ENV = "FLOWPROBE_CORPUS"
HOWTO = (f"set {ENV} to a folder of real captures (.pcap/.pcapng, searched "
         "recursively), e.g. the test captures of nDPI (tests/cfgs/*/pcap) "
         "and tcpdump (tests/)")
SKIP_REASON = f"{ENV} is not set: {HOWTO}"


def root() -> Path | None:
    """The corpus folder, or None when FLOWPROBE_CORPUS is not set."""
    value = os.environ.get(ENV)
    return Path(value) if value else None


def captures(sub: str | None = None) -> list[Path]:
    """Every capture of the corpus (or of its folder `sub`), sorted; [] without one."""
    top = root()
    if top is None:
        return []
    base = top / sub if sub else top
    return sorted(p for p in base.rglob("*") if p.suffix in (".pcap", ".pcapng"))


def named(name: str) -> Path | None:
    """The corpus capture called `name` (first match), or None."""
    return next((p for p in captures() if p.name == name), None)


needs_corpus = pytest.mark.skipif(root() is None, reason=SKIP_REASON)


def params(paths: list[Path]) -> list:
    """Parametrize values for a test over corpus captures: the paths, or one
    skipped placeholder that carries SKIP_REASON when there is no corpus."""
    if paths:
        return paths
    return [pytest.param(None, id="no-corpus", marks=pytest.mark.skip(reason=SKIP_REASON))]
