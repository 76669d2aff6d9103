"""Named exit codes and the exceptions that map to them.

A base module: every package (probe/, driver/, exporters/, collector/) may
import it; it imports only config/ (whose ConfigError maps to CONFIG).
A supervisor halts instead of restarting a reader that exits with CONFIG or
CAPTURE_SETUP: retrying cannot fix those.
"""

from __future__ import annotations

import enum

from flowprobe.config.schema import ConfigError


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1          # unexpected failure
    CONFIG = 2           # bad configuration or command line (argparse uses 2 too)
    CAPTURE_SETUP = 3    # ring / socket / interface could not be set up
    # 4 is not used: it meant "export setup failed", which never ends a process
    # (an unreachable collector is a counter); not reused, so scripts keep meanings.
    INPUT = 5            # an input file is missing, unreadable or not a capture
    EXPORT_INCOMPLETE = 6  # replay: an exporter did not export every record
    INTERFACE_GONE = 7   # a reader's capture interface was deleted (its flows exported);
                         # the probe's exit code under supervisor.on_interface_gone: halt
    INPUT_TRUNCATED = 8  # replay: an input file shrank while being read; the flows read
                         # before the cut were exported (6 takes precedence)
    INTERRUPTED = 130    # SIGINT (128 + 2)


class FlowprobeError(Exception):
    """Base of flowprobe's expected failures: one line, a named exit code."""

    exit_code: ExitCode = ExitCode.FAILURE


class InputError(FlowprobeError):
    """An input (capture) file cannot be read."""

    exit_code = ExitCode.INPUT


class CaptureSetupError(FlowprobeError):
    """Setting up live capture failed (interface, socket, ring, filter)."""

    exit_code = ExitCode.CAPTURE_SETUP


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code a process should end with after ``exc``."""
    if isinstance(exc, ConfigError):
        return ExitCode.CONFIG
    if isinstance(exc, FlowprobeError):
        return ExitCode(exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    return ExitCode.FAILURE


__all__ = ["CaptureSetupError", "ConfigError", "ExitCode", "FlowprobeError",
           "InputError", "exit_code_for"]
