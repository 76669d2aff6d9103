"""One reader process: the child side of the supervisor's fork.

``ReaderProcess`` is the supervisor's handle of one slot (interface, worker,
CPU); ``ReaderProcess.spawn`` forks and the child runs ``child_main``, which
never returns (``os._exit``):

1. signals: SIGTERM/SIGINT set the reader's stop flag, SIGHUP is ignored
   (the supervisor reloads and sends the new config down the control pipe);
   the parent's wakeup fd and every inherited descriptor not ours are closed;
2. parent death: PR_SET_PDEATHSIG=SIGTERM, then a getppid() check (the
   parent may already be gone), and again between blocks;
3. pin to the slot's CPU; configure structlog again; bind iface/ring/cpu/pid;
4. open the ring and exporters; a set-up failure exits with its named code
   (CONFIG, CAPTURE_SETUP) so the supervisor halts instead of looping;
5. run: heartbeat every turn, stats snapshot a few times per second, control
   messages (a new config: reload in place) between blocks.
"""
from __future__ import annotations

import ctypes
import os
import pickle
import signal
import struct
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from flowprobe.probe import heartbeat, privdrop
from flowprobe.probe.errors import ExitCode, exit_code_for
from flowprobe.probe.logs import configure_logging as configure_process_logging
from flowprobe.probe.logs import get_logger
from flowprobe.probe.reader import Reader

PR_SET_PDEATHSIG = 1
PUBLISH_INTERVAL_S = 0.2
_LEN = struct.Struct("<I")


@dataclass(frozen=True)
class ReaderSpec:
    """What one slot runs: a ring on ``iface`` in its fanout group, on ``cpu``."""
    index: int
    iface: str
    worker: int
    cpu: int | None
    fanout_group: int


@dataclass
class ReaderProcess:
    """The supervisor's handle of one slot; a slot outlives its processes."""
    spec: ReaderSpec
    pid: int = 0
    control_fd: int = -1
    started_at: float = 0.0
    failures: int = 0
    restarts: int = 0
    restart_at: float | None = None       # due time of a pending restart
    replacing: bool = False               # rolling restart: respawn on exit
    retiring: bool = False                # removed by a reload: do not respawn
    ready_seen: bool = False
    history: dict = field(default_factory=dict)   # counters of exited incarnations
    sequences: dict = field(default_factory=dict)  # export sequence numbers to continue
    lost: dict = field(default_factory=lambda: {"flows": 0, "packets": 0, "octets": 0})

    @property
    def alive(self) -> bool:
        return self.pid > 0

    def spawn(self, cfg, generation: int, slot: heartbeat.Slot, opts: dict,
              inherited_fds: list[int]) -> int:
        """Fork the reader; returns its pid in the parent."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(w)
            code = ExitCode.FAILURE
            try:
                code = child_main(self.spec, cfg, generation, slot, r, opts,
                                  [fd for fd in inherited_fds if fd not in (r,)])
            except BaseException:   # noqa: BLE001 - a child never returns to the parent
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(int(code))
        os.close(r)
        os.set_blocking(w, False)
        self.pid, self.control_fd = pid, w
        self.started_at = time.monotonic()
        self.ready_seen = False
        return pid

    def send_config(self, generation: int, cfg) -> bool:
        """Hand a new config to the reader (applied between blocks)."""
        body = pickle.dumps((generation, cfg))
        try:
            os.write(self.control_fd, _LEN.pack(len(body)) + body)
            return True
        except OSError:
            return False

    def close_control(self) -> None:
        if self.control_fd >= 0:
            os.close(self.control_fd)
            self.control_fd = -1

    def signal(self, signum: int) -> None:
        if self.pid > 0:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass


# ------------------------------------------------------------------ child side

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


def configure_logging(cfg) -> None:
    """structlog for this process (after fork too), one write per line."""
    configure_process_logging(cfg.logging.level, cfg.logging.format, stream=LineStream(2))


def set_parent_death_signal(signum: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    except (OSError, AttributeError):
        pass   # the getppid() check between blocks still catches it


class Control:
    """Reads length-prefixed pickled (generation, config) messages."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self.buf = b""
        self.closed = False

    def poll(self) -> list[tuple[int, Any]]:
        while not self.closed:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                self.closed = True
                break
            self.buf += chunk
        out = []
        while len(self.buf) >= 4:
            (n,) = _LEN.unpack_from(self.buf)
            if len(self.buf) < 4 + n:
                break
            out.append(pickle.loads(self.buf[4:4 + n]))
            self.buf = self.buf[4 + n:]
        return out


def child_main(spec: ReaderSpec, cfg, generation: int, slot: heartbeat.Slot,
               control_fd: int, opts: dict, inherited_fds: list[int]) -> int:
    state = {"stop": False, "reader": None}

    def handle_stop(signum, frame):  # noqa: ARG001
        state["stop"] = True
        if state["reader"] is not None:
            state["reader"].stopping = True

    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle_stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for fd in inherited_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    parent = opts["supervisor_pid"]
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:
        return ExitCode.FAILURE
    pid = os.getpid()
    slot.reset(pid, generation)
    if spec.cpu is not None:
        try:
            os.sched_setaffinity(0, {spec.cpu})
        except OSError:
            pass   # logged below as cpu=None
    configure_logging(cfg)
    log = get_logger(iface=spec.iface, ring=spec.index, cpu=spec.cpu, pid=pid)
    try:
        if opts.get("restrict_caps"):   # not root (--user, systemd User=)
            privdrop.restrict(privdrop.open_caps(cfg.capture.backend))
        reader = Reader(cfg, spec.iface, index=spec.index, worker=spec.worker,
                        export_urls=opts.get("export_urls", []),
                        json_out=opts.get("json_out", False),
                        fanout_group=spec.fanout_group, log=log,
                        readers=opts.get("readers", 1))
        if opts.get("restrict_caps"):   # the ring is open: keep what running needs
            privdrop.restrict(privdrop.RUN_CAPS)
    except Exception as exc:  # noqa: BLE001 - mapped to a named exit code
        code = exit_code_for(exc)
        log.error("reader_setup_failed", error=str(exc), exit_code=int(code))
        sys.stderr.write(f"flowprobe: error: {exc}\n")
        return code
    state["reader"] = reader
    reader.restore_sequences(opts.get("sequences") or {})
    reader.stopping = state["stop"]
    meta = {"index": spec.index, "iface": spec.iface, "cpu": spec.cpu, "pid": pid}
    control = Control(control_fd)
    gen = {"n": generation, "next_publish": 0.0}

    def publish() -> None:
        slot.publish({**meta, "generation": gen["n"], **reader.stats()})

    def between_blocks(now: float) -> None:
        for new_gen, new_cfg in control.poll():
            try:
                changed = reader.reload(new_cfg)
                if new_cfg.logging != cfg.logging:
                    configure_logging(new_cfg)
                log.info("reader_reloaded", generation=new_gen, changed=changed)
            except Exception as exc:  # noqa: BLE001 - keep running the old setting
                log.error("reader_reload_failed", generation=new_gen, error=str(exc))
            gen["n"] = new_gen
            slot.set_generation(new_gen)
            gen["next_publish"] = 0.0
        if os.getppid() != parent:
            log.warning("supervisor_gone")
            reader.stopping = True
        if now >= gen["next_publish"]:
            publish()
            gen["next_publish"] = now + PUBLISH_INTERVAL_S

    publish()
    slot.set_state(heartbeat.RUNNING)
    try:
        code = reader.run(beat=slot.beat, between_blocks=between_blocks,
                          stats_interval_s=opts.get("stats_interval_s", 30.0))
    except Exception as exc:  # noqa: BLE001
        log.exception("reader_failed", error=str(exc))
        return exit_code_for(exc)
    slot.set_state(heartbeat.STOPPING)
    slot.publish({**meta, "generation": gen["n"], **reader.final_stats})
    return code
