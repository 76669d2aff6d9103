"""Shared pytest set-up. tests/ has no __init__.py (--import-mode=importlib):
the helper modules in tests/support/ (packets, synth, collectors, records,
corpus, export_pcap) are imported by name through sys.path."""

import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
SUPPORT_DIR = TESTS_DIR / "support"
TOOLS_DIR = REPO_ROOT / "tools"

for _path in (SUPPORT_DIR, TESTS_DIR):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import corpus  # noqa: E402  (the two need SUPPORT_DIR on the path)
import synth  # noqa: E402


def pytest_terminal_summary(terminalreporter):
    """Say once, at the end, that real-world captures were not used."""
    if corpus.root() is not None:
        return
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if corpus.ENV in str(getattr(r, "longrepr", ""))]
    if skipped:
        terminalreporter.write_line(
            f"corpus: {len(skipped)} tests on real-world captures skipped; {corpus.HOWTO}.")


@pytest.fixture(scope="session")
def synthetic_captures(tmp_path_factory) -> list[Path]:
    """Seeded captures in every file flavour the readers handle (classic
    pcap in us and ns, pcapng), malformed frames included: what the
    corpus tests also run on when there is no corpus."""
    out = tmp_path_factory.mktemp("synthetic")
    paths = []
    for name, kw in (("mixed.pcap", {}), ("mixed-ns.pcap", {"nsec": True}),
                     ("mixed.pcapng", {"fmt": "pcapng"})):
        path = out / name
        synth.generate(path, flows=300, packets=3000, seed=len(paths) + 11,
                       malformed=True, **kw)
        paths.append(path)
    return paths
