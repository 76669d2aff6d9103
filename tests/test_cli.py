"""The flowprobe command line: version, usage errors, config errors as exit codes."""

import subprocess
import sys

from flowprobe import __version__
from flowprobe.errors import ExitCode


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowprobe", *args],
                          capture_output=True, text=True, timeout=60)


def test_version():
    """--version prints the package version and exits 0."""
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"flowprobe {__version__}"


def test_unknown_subcommand_exits_2():
    """An unknown subcommand is a usage error (exit 2)."""
    proc = run_cli("no-such-command")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


def test_replay_bad_override_exits_2():
    """A bad command-line value is reported with its config path, exit 2, no traceback."""
    proc = run_cli("replay", "whatever.pcap", "--idle-timeout", "-1",
                   "--export", "udpp://127.0.0.1:1")
    assert proc.returncode == ExitCode.CONFIG
    assert "Traceback" not in proc.stderr
    assert "flow.idle_timeout_s (command line)" in proc.stderr
    assert "unknown scheme 'udpp'" in proc.stderr


def test_replay_missing_input_exits_input(tmp_path):
    """A missing capture file is one line on stderr and exit code INPUT."""
    proc = run_cli("replay", str(tmp_path / "absent.pcap"))
    assert proc.returncode == ExitCode.INPUT
    assert "Traceback" not in proc.stderr
    assert "absent.pcap" in proc.stderr


def test_run_config_error_exits_2_with_every_message(tmp_path):
    """A bad config: exit 2, each problem with its path and line, no traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("supervisor:\n  workers: many\nexport:\n  - udpp://x\n")
    proc = run_cli("run", "-i", "lo", "-c", str(bad))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "supervisor.workers (line 2)" in proc.stderr
    assert "export[0].url (line 4)" in proc.stderr


def test_run_without_interface_exits_2():
    """No interface anywhere: exit 2 naming capture.interface."""
    proc = run_cli("run", "--stats-socket", "")
    assert proc.returncode == 2
    assert "capture.interface" in proc.stderr
