"""structlog configuration: JSON lines to stderr, or the console renderer on a TTY.

A base module that every package may import. Configure once per process
(and again in a child after fork) with ``configure_logging(level, fmt)``;
get loggers with ``get_logger(ring=..., iface=...)``. Processes that share
stderr (the supervisor and its readers) pass ``stream=LineStream()`` so that
each line reaches the fd in one write. Events are snake_case facts with
key/value data; never one line per packet.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO,
          "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", fmt: str = "auto",
                      stream: TextIO | None = None) -> None:
    """Set up structlog for this process.

    level: debug | info | warning | error.
    fmt: auto (console on a TTY, else JSON) | json | console.
    stream: where lines go; stderr by default (stdout carries data, e.g. --json).
    """
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r} (expected: {', '.join(LEVELS)})")
    if fmt not in ("auto", "json", "console"):
        raise ValueError(f"unknown log format {fmt!r} (expected: auto, json, console)")
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    tty = bool(isatty is not None and isatty())
    if fmt == "auto":
        fmt = "console" if tty else "json"
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        processors += [structlog.processors.format_exc_info,
                       structlog.processors.JSONRenderer(sort_keys=False)]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=tty)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get_logger(**bind: Any) -> Any:
    """A structlog logger with ``bind`` (e.g. ring, iface, cpu, pid) attached."""
    return structlog.get_logger("flowprobe").bind(**bind)


class LineStream:
    """A log stream whose lines reach the fd in one write() each.

    The supervisor and every reader share stderr; print() (structlog's
    PrintLogger) writes a line and its newline separately, so lines of two
    processes could glue together. Whole lines up to PIPE_BUF are atomic."""

    def __init__(self, fd: int = 2) -> None:
        self.fd = fd
        self._buf = ""

    def write(self, text: str) -> int:
        self._buf += text
        if "\n" in self._buf:
            head, _, self._buf = self._buf.rpartition("\n")
            data = (head + "\n").encode(errors="replace")
            while data:
                try:
                    data = data[os.write(self.fd, data):]
                except InterruptedError:
                    continue
                except OSError:
                    break
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return os.isatty(self.fd)


__all__ = ["LEVELS", "LineStream", "configure_logging", "get_logger"]
