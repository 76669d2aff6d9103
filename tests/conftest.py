"""Shared pytest set-up: tests/ has no __init__.py (--import-mode=importlib),
so helper modules here (e.g. synth.py) are imported by name via sys.path."""

import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
CORPUS_DIR = REPO_ROOT.parent / "shared" / "corpus"

if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))
