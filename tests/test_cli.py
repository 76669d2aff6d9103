"""The flowprobe command line: version, usage errors, config errors as exit codes."""

import socket
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


def test_run_takes_the_flow_flags_of_replay():
    """`run` has replay's --idle-timeout/--active-timeout/--max-flows, checked
    as config overrides (exit 2 naming the key), before any interface is touched."""
    proc = run_cli("run", "--help")
    for flag in ("--idle-timeout", "--active-timeout", "--max-flows"):
        assert flag in proc.stdout
    proc = run_cli("run", "-i", "fpnone0", "--idle-timeout", "0", "--max-flows", "0",
                   "--active-timeout", "-5")
    assert proc.returncode == ExitCode.CONFIG, proc.stderr
    assert "Traceback" not in proc.stderr
    for key in ("flow.idle_timeout_s", "flow.active_timeout_s", "flow.max_flows"):
        assert f"{key} (command line)" in proc.stderr


def test_replay_exit_status_when_records_were_not_exported(tmp_path):
    """Every record exported: exit 0. An exporter that could not write them
    (the file's directory is a regular file): exit EXPORT_INCOMPLETE, with
    the count on stderr; NetFlow v5's IPv6 records do not count as failures."""
    demo = str(__import__("pathlib").Path(__file__).parent.parent / "probe" / "data" / "demo.pcap")
    good = tmp_path / "ok.ipfix"
    proc = run_cli("replay", demo, "--export", f"ipfix+file://{good}")
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert f"export ipfix+file://{good}: 120 of 120 records\n" in proc.stderr
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    bad = blocker / "flows.ipfix"
    proc = run_cli("replay", demo, "--export", f"ipfix+file://{good}",
                   "--export", f"ipfix+file://{bad}")
    assert proc.returncode == ExitCode.EXPORT_INCOMPLETE == 6, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"export ipfix+file://{bad}: 0 of 120 records, 120 NOT EXPORTED" in proc.stderr
    assert not bad.exists()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))      # a port that takes them (not refused)
        proc = run_cli("replay", demo, "--export",
                       f"netflow5://127.0.0.1:{listener.getsockname()[1]}",
                       "--export", f"ipfix+file://{good}")
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert "38 not exportable in this format" in proc.stderr
    help_text = " ".join(run_cli("replay", "--help").stdout.split())
    assert "exit status: 0 every record exported" in help_text
    assert "6 an exporter did not export every record" in help_text
