"""`flowprobe run`: a pre-fork supervisor with one pinned reader per ring.

    Supervisor.run():
        spawn a reader per slot (interface x worker)
        loop:
            a queued signal? -> handle_<name>()    (handlers only enqueue)
            else sleep in select() until a signal, a stats/metrics client
                 or the next tick
            reap_readers()      waitpid(WNOHANG): halt on CONFIG/CAPTURE_SETUP,
                                respawn a dead one in its slot (with backoff)
            check_heartbeats()  kill a reader whose heartbeat went stale
            manage_readers()    due restarts, the rolling restart of a reload
            notify()            systemd READY / WATCHDOG / STATUS

Each slot has a ring in the interface's PACKET_FANOUT_HASH group (one group
id per interface), its own flow table and exporters and its own observation
domain (base + slot index). Counters and heartbeats live in shared memory
(probe/heartbeat.py). SIGTERM or SIGINT: every reader exports everything and
exits 0, then the supervisor exits 0; a second SIGINT kills the readers.
SIGHUP reloads the config: filter, timeouts and exporters change in place;
a change that needs new rings restarts the readers one at a time.
"""
from __future__ import annotations

import os
import select
import signal
import time
from typing import Any

from flowprobe.config import Config, ConfigError
from flowprobe.config.schema import parse_cpulist, parse_interfaces
from flowprobe.errors import ExitCode
from flowprobe.logs import LineStream, configure_logging, get_logger
from flowprobe.probe import heartbeat, privdrop, stats
from flowprobe.probe.config_checks import check_config, needs_new_rings
from flowprobe.probe.metrics import MetricsServer
from flowprobe.probe.reader import attach_shared_programs, rings_per_interface
from flowprobe.probe.readerproc import ReaderOptions, ReaderProcess, ReaderSpec
from flowprobe.probe.sdnotify import Notifier

TICK_S = 0.1
HALT_CODES = (ExitCode.CONFIG, ExitCode.CAPTURE_SETUP)
STARTUP_GRACE_S = 30.0     # a starting reader may take this long to open its ring
HEALTHY_AFTER_S = 30.0     # a reader up this long resets its failure count
SIGNALS = {signal.SIGTERM: "term", signal.SIGINT: "int", signal.SIGHUP: "hup",
           signal.SIGCHLD: "chld"}


class Supervisor:
    def __init__(self, cfg: Config, *, config_path: str | None = None,
                 overrides: dict | None = None, export_urls: list[str] = (),
                 json_out: bool = False, user: str | None = None) -> None:
        self.cfg = cfg
        self.user = user                  # --user: drop to it after the root-only set-up
        self.config_path = config_path
        self.overrides = dict(overrides or {})
        self.export_urls = list(export_urls)
        self.json_out = json_out
        self.pid = os.getpid()
        self.log = get_logger(role="supervisor", pid=self.pid)
        self.generation = 1
        self.readers: list[ReaderProcess] = []
        self.signals: list[int] = []
        self.slots = heartbeat.SlotTable()
        self.groups: dict[str, int] = {}
        self.stopping = False
        self.int_count = 0
        self.halt_code: int | None = None
        self.rolling: list[int] = []      # slot indices still to replace
        self.roll_current: int | None = None
        self.ready = False
        self.started = time.monotonic()
        self.notifier = Notifier()
        self.next_watchdog = 0.0
        self.stats_server = stats.StatsServer(cfg.supervisor.stats_socket, self.stats_doc, self.log)
        self.metrics = None
        self._wake_r = self._wake_w = -1

    # ------------------------------------------------------------ layout
    def specs(self, cfg: Config) -> list[ReaderSpec]:
        """One spec per ring: every interface x every worker, CPUs assigned round robin."""
        ifaces = parse_interfaces(cfg.capture.interface)
        allowed = sorted(os.sched_getaffinity(0))
        workers = cfg.supervisor.workers or len(allowed)
        cpus = parse_cpulist(cfg.supervisor.cpus) or allowed
        out = []
        for n, iface in enumerate(ifaces):
            group = self.groups.setdefault(iface, self._group_id(len(self.groups)))
            rings = rings_per_interface(cfg, iface, workers)
            for w in range(rings):
                index = len(out)
                out.append(ReaderSpec(index=index, iface=iface, worker=w,
                                      cpu=cpus[index % len(cpus)],
                                      fanout_group=group if rings > 1 else 0))
        if len(out) > self.slots.size:
            raise ConfigError([f"supervisor.workers: {len(out)} readers exceed "
                               f"the limit of {self.slots.size}"])
        return out

    def _group_id(self, n: int) -> int:
        # distinct per interface and per probe instance, never 0
        return 1 + ((self.pid * 8 + n) % 0xFFFE)

    # ------------------------------------------------------------ main loop
    def run(self) -> int:
        specs = self.specs(self.cfg)
        self.init_signals()
        try:
            self.stats_server.open()
            if self.cfg.metrics.listen:
                self.metrics = MetricsServer(self.cfg.metrics.listen, self.stats_doc, self.log)
                try:
                    self.metrics.open()
                except OSError as exc:
                    raise ConfigError([f"metrics.listen: cannot listen on "
                                       f"{self.cfg.metrics.listen}: {exc.strerror or exc}"]) from None
            self.xdp_programs = attach_shared_programs(
                self.cfg, parse_interfaces(self.cfg.capture.interface))
            self.drop_privileges()
            self.readers = [ReaderProcess(s) for s in specs]
            self.log.info("supervisor_started", readers=len(specs),
                          interfaces=parse_interfaces(self.cfg.capture.interface),
                          cpus=[s.cpu for s in specs],
                          stats_socket=self.cfg.supervisor.stats_socket)
            for r in self.readers:
                self.spawn(r)
            while self.halt_code is None:
                sig = self.signals.pop(0) if self.signals else None
                if sig is not None:
                    getattr(self, f"handle_{SIGNALS[sig]}")()
                    continue
                self.sleep()
                self.reap_readers()
                if self.halt_code is not None:
                    break
                self.check_heartbeats()
                self.manage_readers()
                self.notify()
        finally:
            self.cleanup()
        return self.halt_code

    def drop_privileges(self) -> None:
        """--user: become the user, keeping only the readers' capabilities
        (probe/privdrop.py); each reader narrows further once its ring is open."""
        if not self.user:
            return
        account = privdrop.lookup(self.user)
        caps = privdrop.open_caps(self.cfg.capture.backend)
        if self.stats_server.fileno() >= 0:
            privdrop.chown_path(self.cfg.supervisor.stats_socket, account)
        privdrop.drop_to_user(account, caps)
        self.log.info("privileges_dropped", user=account.name, uid=account.uid,
                      gid=account.gid, capabilities=sorted(privdrop.CAP_NAMES[c] for c in caps))

    def init_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in SIGNALS:
            signal.signal(sig, self.enqueue_signal)

    def enqueue_signal(self, signum, frame) -> None:  # noqa: ARG002
        if len(self.signals) < 16:
            self.signals.append(signum)

    def sleep(self, timeout: float = TICK_S) -> None:
        fds = [self._wake_r] + [s.fileno() for s in (self.stats_server, self.metrics)
                                if s is not None and s.fileno() >= 0]
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            return
        if self._wake_r in ready:
            try:
                while os.read(self._wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        if self.stats_server.fileno() in ready:
            self.stats_server.handle()
        if self.metrics is not None and self.metrics.fileno() in ready:
            self.metrics.handle()

    # ------------------------------------------------------------ signals
    def handle_chld(self) -> None:
        """Reaping happens every turn; the signal only wakes the loop."""

    def handle_term(self) -> None:
        self.log.info("stopping", signal="SIGTERM")
        self.stop(graceful=True)

    def handle_int(self) -> None:
        self.int_count += 1
        if self.stopping:
            self.log.warning("stopping_fast", signal="SIGINT")
            self.stop(graceful=False)
            return
        self.log.info("stopping", signal="SIGINT", hint="SIGINT again to stop fast")
        self.stop(graceful=True)

    def handle_hup(self) -> None:
        self.reload()

    # ------------------------------------------------------------ readers
    def inherited_fds(self) -> list[int]:
        fds = [self._wake_r, self._wake_w, self.stats_server.fileno()]
        if self.metrics is not None:
            fds.append(self.metrics.fileno())
        fds += [r.control_fd for r in self.readers if r.control_fd >= 0]
        if self.notifier.sock is not None:
            fds.append(self.notifier.sock.fileno())
        return [fd for fd in fds if fd >= 0]

    def spawn(self, r: ReaderProcess) -> None:
        slot = self.slots[r.spec.index]
        r.close_control()
        options = ReaderOptions(supervisor_pid=self.pid, export_urls=tuple(self.export_urls),
                                json_out=self.json_out,
                                restrict_caps=bool(self.user) or os.geteuid() != 0,
                                stats_interval_s=self.cfg.supervisor.stats_interval_s,
                                sequences=r.sequences, readers=len(self.readers))
        r.restart_at = None
        pid = r.spawn(self.cfg, self.generation, slot, options, self.inherited_fds())
        self.log.info("reader_spawned", ring=r.spec.index, iface=r.spec.iface,
                      cpu=r.spec.cpu, reader_pid=pid, fanout_group=r.spec.fanout_group)

    def reap_readers(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            r = next((x for x in self.readers if x.pid == pid), None)
            if r is None:
                continue
            self.reader_exited(r, os.waitstatus_to_exitcode(status))

    def reader_exited(self, r: ReaderProcess, code: int) -> None:
        now = time.monotonic()
        raw = self.slots[r.spec.index].snapshot() or {}
        snap = stats.counters(raw)
        r.sequences = raw.get("sequences") or r.sequences
        r.pid = 0
        r.close_control()
        clean = code == ExitCode.OK
        lost = stats.held(snap) if not clean else {"flows": 0, "packets": 0, "octets": 0}
        r.history = stats.add(r.history, stats.retired(snap)) if r.history else stats.retired(snap)
        self.slots[r.spec.index].clear()
        if not clean:
            r.lost = stats.add(r.lost, lost)
        self.log.info("reader_exited", ring=r.spec.index, iface=r.spec.iface,
                      exit_code=code, lost_flows=lost["flows"], lost_packets=lost["packets"])
        if self.stopping or r.retiring:
            return
        if code in HALT_CODES:
            self.log.error("halting", reason="reader could not start", ring=r.spec.index,
                           exit_code=code, name=ExitCode(code).name)
            self.stop(graceful=True, code=code)
            return
        if r.replacing and clean:
            r.replacing = False
            self.spawn(r)
            return
        r.failures = 1 if now - r.started_at > HEALTHY_AFTER_S else r.failures + 1
        delay = 0.0 if r.failures <= 1 else min(
            0.5 * 2 ** (r.failures - 2), self.cfg.supervisor.restart_backoff_max_s)
        r.restarts += 1
        r.restart_at = now + delay
        self.log.warning("reader_died", ring=r.spec.index, exit_code=code,
                         restart_in_s=delay, failures=r.failures)

    def check_heartbeats(self) -> None:
        timeout = self.cfg.supervisor.heartbeat_timeout_s
        for r in self.readers:
            if not r.alive:
                continue
            slot = self.slots[r.spec.index]
            h = slot.header()
            if h["pid"] != r.pid or h["beat_ns"] == 0:   # not yet started
                age, limit = time.monotonic() - r.started_at, max(timeout, STARTUP_GRACE_S)
            else:
                age = slot.beat_age_s()
                limit = timeout if h["state"] == heartbeat.RUNNING else max(timeout, STARTUP_GRACE_S)
                if h["state"] == heartbeat.RUNNING and not r.ready_seen:
                    r.ready_seen = True
            if age > limit and not self.stopping:
                self.log.error("reader_stale", ring=r.spec.index, reader_pid=r.pid,
                               heartbeat_age_s=round(age, 3))
                r.signal(signal.SIGKILL)

    def manage_readers(self) -> None:
        now = time.monotonic()
        for r in self.readers:
            if not r.alive and r.restart_at is not None and now >= r.restart_at:
                self.spawn(r)
        if self.roll_current is not None:
            cur = self.readers[self.roll_current]
            if cur.alive and cur.ready_seen and not cur.replacing:
                self.roll_current = None
        if self.roll_current is None and self.rolling:
            idx = self.rolling.pop(0)
            r = self.readers[idx]
            self.roll_current = idx
            if r.alive:
                r.replacing = True
                r.signal(signal.SIGTERM)
            else:
                self.spawn(r)
        self.readers = [r for r in self.readers if not (r.retiring and not r.alive)]

    # ------------------------------------------------------------ reload
    def load_config(self) -> Config:
        """The config a start with the same file and options would build."""
        from flowprobe.probe.cli import build_config   # with the CLI's CONFIG_CHECKS
        return build_config(self.config_path, self.overrides)

    def reload(self) -> None:
        self.notifier.notify("RELOADING=1", "STATUS=reloading configuration")
        try:
            cfg = self.load_config()
            check_config(cfg, self.export_urls)
            specs = self.specs(cfg)
        except ConfigError as exc:
            self.log.error("reload_failed", errors=str(exc).splitlines())
            self.notifier.notify("READY=1")
            return
        configure_logging(cfg.logging.level, cfg.logging.format, stream=LineStream())
        old, self.cfg = self.cfg, cfg
        self.generation += 1
        fixed = [k for k in ("stats_socket",) if getattr(old.supervisor, k) != getattr(cfg.supervisor, k)]
        fixed += ["metrics.listen"] if old.metrics != cfg.metrics else []
        if fixed:
            self.log.warning("reload_needs_restart", keys=fixed)
        if needs_new_rings(old, cfg):
            self.roll(specs)
            self.log.info("reloaded", generation=self.generation, rolling_restart=True)
        else:
            for r in self.readers:
                if r.alive:
                    r.send_config(self.generation, cfg)
            self.log.info("reloaded", generation=self.generation, rolling_restart=False)
        self.notifier.notify("READY=1")

    def roll(self, specs: list[ReaderSpec]) -> None:
        """Replace the readers one at a time with ``specs``."""
        keep = min(len(specs), len(self.readers))
        for r, spec in zip(self.readers, specs):
            r.spec = spec
        for r in self.readers[keep:]:
            r.retiring = True
            r.signal(signal.SIGTERM)
        for spec in specs[keep:]:
            r = ReaderProcess(spec)
            self.readers.append(r)
            self.spawn(r)
        self.rolling = list(range(keep))
        self.roll_current = None

    # ------------------------------------------------------------ stop
    def stop(self, graceful: bool = True, code: int = ExitCode.OK) -> None:
        """Stop every reader (SIGTERM: export and exit 0; or SIGKILL) and
        wait for them; sets the exit code."""
        self.stopping = True
        self.notifier.notify("STOPPING=1", "STATUS=stopping")
        sig = signal.SIGTERM if graceful else signal.SIGKILL
        for r in self.readers:
            r.signal(sig)
        deadline = time.monotonic() + self.cfg.supervisor.graceful_timeout_s
        failed = False
        while any(r.alive for r in self.readers):
            if self.signals:
                s = self.signals.pop(0)
                if s == signal.SIGINT and graceful:
                    self.log.warning("stopping_fast", signal="SIGINT")
                    graceful = False
                    code = ExitCode.INTERRUPTED
                    for r in self.readers:
                        r.signal(signal.SIGKILL)
            if time.monotonic() > deadline and graceful:
                self.log.error("readers_did_not_stop", timeout_s=self.cfg.supervisor.graceful_timeout_s)
                graceful, failed = False, True
                for r in self.readers:
                    r.signal(signal.SIGKILL)
            self.sleep(0.05)
            self.reap_readers()
        if failed and code == ExitCode.OK:
            code = ExitCode.FAILURE
        if not graceful and code == ExitCode.OK:
            code = ExitCode.INTERRUPTED
        doc = self.stats_doc()
        self.log.info("probe_stopped", exit_code=int(code), **doc["total"],
                      restarts=doc["restarts"], lost=doc["lost"])
        self.halt_code = int(code)

    def cleanup(self) -> None:
        for r in self.readers:
            if r.alive:
                r.signal(signal.SIGKILL)
                try:
                    os.waitpid(r.pid, 0)
                except ChildProcessError:
                    pass
            r.close_control()
        for prog in getattr(self, "xdp_programs", []):
            prog.close()          # after the readers: detaches the program
        self.stats_server.close()
        if self.metrics is not None:
            self.metrics.close()
        self.notifier.close()

    # ------------------------------------------------------------ stats
    def stats_doc(self) -> dict[str, Any]:
        """The document of the stats socket, the metrics and the final log line."""
        return stats.document(self.readers, self.slots, pid=self.pid,
                              generation=self.generation,
                              uptime_s=time.monotonic() - self.started)

    def notify(self) -> None:
        now = time.monotonic()
        if not self.ready and self.readers and all(r.ready_seen for r in self.readers):
            self.ready = True
            self.log.info("probe_ready", readers=len(self.readers),
                          pids=[r.pid for r in self.readers])
            self.notifier.notify("READY=1", f"STATUS={self.status_line()}")
        if not self.notifier.enabled or now < self.next_watchdog:
            return
        interval = self.notifier.watchdog_interval_s()
        lines = [f"STATUS={self.status_line()}"]
        if interval:
            lines.append("WATCHDOG=1")
        self.notifier.notify(*lines)
        self.next_watchdog = now + min(interval or 5.0, 5.0)

    def status_line(self) -> str:
        return stats.status_line(self.stats_doc())


__all__ = ["Supervisor"]
