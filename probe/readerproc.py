"""One reader process: the child side of the supervisor's fork.

``ReaderProcess`` is the supervisor's handle of one slot (interface, worker,
CPU); ``ReaderProcess.spawn`` forks and the child runs a ``ReaderChild``
with its frozen ``ReaderOptions``, then ends with ``os._exit`` (it never
returns to the supervisor's code). ``ReaderChild.init_process``:

1. signals: SIGTERM/SIGINT set the reader's stop flag, SIGHUP is ignored
   (the supervisor reloads and sends the new config down the control pipe);
   the parent's wakeup fd and every inherited descriptor not ours are closed;
2. parent death: PR_SET_PDEATHSIG=SIGTERM, then a getppid() check (the
   parent may already be gone), and again between blocks;
3. pin to the slot's CPU; configure structlog again; bind iface/ring/cpu/pid;
4. open the ring and exporters; a set-up failure exits with its named code
   (CONFIG, CAPTURE_SETUP) so the supervisor halts instead of looping;
5. run: heartbeat (with the held flows/packets) every turn and after every
   batch exported, stats snapshot a few times per second, control
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
from typing import Any, Mapping

from flowprobe.errors import ExitCode, exit_code_for
from flowprobe.logs import LineStream, configure_logging, get_logger
from flowprobe.probe import heartbeat, privdrop
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


@dataclass(frozen=True)
class ReaderOptions:
    """How the supervisor runs every reader (the same for each slot but
    ``sequences``); set at spawn, read-only in the child."""
    supervisor_pid: int
    export_urls: tuple[str, ...] = ()
    json_out: bool = False
    restrict_caps: bool = False          # not root: keep only the needed capabilities
    stats_interval_s: float = 30.0
    sequences: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    readers: int = 1                     # how many share each destination's pacing


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
    iface_check_at: float | None = None   # interface gone: next look for it
    iface_wait_s: float = 0.0             # current interval between looks
    replacing: bool = False               # rolling restart: respawn on exit
    retiring: bool = False                # removed by a reload: do not respawn
    ready_seen: bool = False
    history: dict = field(default_factory=dict)   # counters of exited incarnations
    sequences: dict = field(default_factory=dict)  # export sequence numbers to continue
    lost: dict = field(default_factory=lambda: {"flows": 0, "packets": 0, "octets": 0})

    @property
    def alive(self) -> bool:
        return self.pid > 0

    def spawn(self, cfg, generation: int, slot: heartbeat.Slot, options: ReaderOptions,
              inherited_fds: list[int]) -> int:
        """Fork the reader; returns its pid in the parent."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(w)
            code = ExitCode.FAILURE
            try:
                child = ReaderChild(self.spec, cfg, generation, slot, r, options,
                                    [fd for fd in inherited_fds if fd not in (r,)])
                code = child.init_process()
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


class ReaderChild:
    """The reader process after the fork, as gunicorn's ``Worker``:
    ``init_process()`` sets the process up (signals, descriptors, parent
    death, CPU, logging, ring and exporters), then ``run()`` reads until a
    stop; both return the exit code and never raise a set-up failure."""

    def __init__(self, spec: ReaderSpec, cfg, generation: int, slot: heartbeat.Slot,
                 control_fd: int, options: ReaderOptions, inherited_fds: list[int]) -> None:
        self.spec = spec
        self.cfg = cfg
        self.generation = generation
        self.slot = slot
        self.control_fd = control_fd
        self.options = options
        self.inherited_fds = inherited_fds
        self.pid = os.getpid()
        self.stop_requested = False
        self.reader: Reader | None = None
        self.control: Control | None = None
        self.log: Any = None
        self.next_publish = 0.0

    # ------------------------------------------------------------ set-up
    def init_process(self) -> int:
        self.init_signals()
        self.close_inherited_fds()
        set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != self.options.supervisor_pid:
            return ExitCode.FAILURE
        self.slot.reset(self.pid, self.generation)
        self.pin_cpu()
        # structlog again after the fork; one write per line on the shared stderr
        configure_logging(self.cfg.logging.level, self.cfg.logging.format,
                          stream=LineStream())
        self.log = get_logger(iface=self.spec.iface, ring=self.spec.index,
                              cpu=self.spec.cpu, pid=self.pid)
        try:
            self.reader = self.open_reader()
        except Exception as exc:  # noqa: BLE001 - mapped to a named exit code
            code = exit_code_for(exc)
            self.log.error("reader_setup_failed", error=str(exc), exit_code=int(code))
            sys.stderr.write(f"flowprobe: error: {exc}\n")
            return code
        self.reader.restore_sequences(dict(self.options.sequences))
        self.reader.stopping = self.stop_requested
        self.control = Control(self.control_fd)
        return self.run()

    def init_signals(self) -> None:
        """SIGTERM/SIGINT stop the reader after its block; SIGHUP is the
        supervisor's (a new config comes down the control pipe)."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.handle_stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    def handle_stop(self, signum, frame) -> None:  # noqa: ARG002
        self.stop_requested = True
        if self.reader is not None:
            self.reader.stopping = True

    def close_inherited_fds(self) -> None:
        for fd in self.inherited_fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def pin_cpu(self) -> None:
        if self.spec.cpu is not None:
            try:
                os.sched_setaffinity(0, {self.spec.cpu})
            except OSError:
                pass   # logged as cpu=None

    def open_reader(self) -> Reader:
        """The ring and exporters; without root, only the capabilities that
        opening needs, then only those that running needs."""
        if self.options.restrict_caps:   # not root (--user, systemd User=)
            privdrop.restrict(privdrop.open_caps(self.cfg.capture.backend))
        reader = Reader(self.cfg, self.spec.iface, index=self.spec.index,
                        worker=self.spec.worker, export_urls=list(self.options.export_urls),
                        json_out=self.options.json_out,
                        fanout_group=self.spec.fanout_group, log=self.log,
                        readers=self.options.readers)
        if self.options.restrict_caps:   # the ring is open: keep what running needs
            privdrop.restrict(privdrop.RUN_CAPS)
        return reader

    # ------------------------------------------------------------ running
    def run(self) -> int:
        self.publish()
        self.slot.set_state(heartbeat.RUNNING)
        try:
            code = self.reader.run(beat=self.beat, between_blocks=self.between_blocks,
                                   stats_interval_s=self.options.stats_interval_s)
        except Exception as exc:  # noqa: BLE001
            self.log.exception("reader_failed", error=str(exc))
            return exit_code_for(exc)
        self.slot.set_state(heartbeat.STOPPING)
        self.publish(self.reader.final_stats)
        return code

    def beat(self) -> None:
        """Every loop turn and after every batch exported: the heartbeat and
        what the reader holds unexported (the supervisor's lost count if
        this process dies now)."""
        self.slot.beat(self.reader.table.held())

    def between_blocks(self, now: float) -> None:
        """New configs, parent death and the stats snapshot, between blocks."""
        for generation, cfg in self.control.poll():
            self.apply_config(generation, cfg)
        if os.getppid() != self.options.supervisor_pid:
            self.log.warning("supervisor_gone")
            self.reader.stopping = True
        if now >= self.next_publish:
            self.publish()
            self.next_publish = now + PUBLISH_INTERVAL_S

    def apply_config(self, generation: int, cfg) -> None:
        """Reload in place; a config the reader rejects leaves the old one running."""
        try:
            changed = self.reader.reload(cfg)
            if cfg.logging != self.cfg.logging:
                configure_logging(cfg.logging.level, cfg.logging.format, stream=LineStream())
            self.cfg = cfg
            self.log.info("reader_reloaded", generation=generation, changed=changed)
        except Exception as exc:  # noqa: BLE001 - keep running the old setting
            self.log.error("reader_reload_failed", generation=generation, error=str(exc))
        self.generation = generation
        self.slot.set_generation(generation)
        self.next_publish = 0.0

    def publish(self, stats: dict[str, Any] | None = None) -> None:
        meta = {"index": self.spec.index, "iface": self.spec.iface,
                "cpu": self.spec.cpu, "pid": self.pid}
        self.slot.publish({**meta, "generation": self.generation,
                           **(self.reader.stats() if stats is None else stats)})
