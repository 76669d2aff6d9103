"""Named exit codes and the exceptions that map to them.

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
    EXPORT_SETUP = 4     # an export destination could not be opened
    INPUT = 5            # an input file is missing, unreadable or not a capture
    EXPORT_INCOMPLETE = 6  # replay: an exporter did not export every record
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


class ExportSetupError(FlowprobeError):
    """An export destination could not be opened."""

    exit_code = ExitCode.EXPORT_SETUP


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code a process should end with after ``exc``."""
    if isinstance(exc, ConfigError):
        return ExitCode.CONFIG
    if isinstance(exc, FlowprobeError):
        return ExitCode(exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    return ExitCode.FAILURE


__all__ = ["CaptureSetupError", "ConfigError", "ExitCode", "ExportSetupError",
           "FlowprobeError", "InputError", "exit_code_for"]
