"""Paths inside the repository that tests and benchmarks run."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
SENDER = TOOLS / "sender.py"   # the bounded raw sender (tools/sender.py)
