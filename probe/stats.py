"""Probe counters: normalized per reader, summed, served on a unix socket.

Readers publish raw snapshots (probe/heartbeat.py); ``counters(snapshot)``
turns one into the normalized shape every consumer uses (the stats socket,
``flowprobe stats``, the Prometheus endpoint, the final log line)::

    ring:      packets drops freezes
    table:     packets_seen packets_accepted octets_accepted skipped{reason}
               flows_active flows_created flows_expired{reason}
               records_emitted packets_emitted octets_emitted
               dpi{inspected detected guessed unknown no_state packets
                   pool_in_use pool_peak}   (application identification)
    exporters: {name: records_exported records_failed messages send_errors}

``document()`` puts every reader's counters (exited incarnations included)
and the totals into the one document the supervisor serves. The socket
protocol: connect, read one JSON document until EOF.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Any, Callable

from flowprobe.config import load_config
from flowprobe.errors import ExitCode, FlowprobeError
from flowprobe.probe import heartbeat

DEFAULT_SOCKET = "/run/flowprobe/flowprobe.sock"


#: XDP_STATISTICS of an AF_XDP ring, reported beside packets/drops/freezes.
XDP_COUNTERS = ("rx_dropped", "rx_ring_full", "rx_fill_ring_empty_descs", "rx_invalid_descs")

#: Application identification counters of a table (struct ft_stats dpi_*):
#: conversations given an nDPI state, how they ended, those that found the
#: pool empty, packets inspected, states held now and their high-water mark
#: (the total's pool_peak is the sum of the readers' peaks).
DPI_COUNTERS = ("inspected", "detected", "guessed", "unknown", "no_state", "packets",
                "pool_in_use", "pool_peak")


def counters(snap: dict | None) -> dict:
    """The normalized counters of one reader snapshot (empty for None)."""
    snap = snap or {}
    ring = snap.get("ring", {})
    table = snap.get("table", {})
    out: dict[str, Any] = {
        "ring": {"packets": ring.get("kernel_packets", 0),
                 "drops": ring.get("kernel_drops", 0),
                 "freezes": ring.get("freeze_q_cnt", 0)},
        "table": {k: table.get(k, 0) for k in (
            "packets_seen", "packets_accepted", "octets_accepted", "flows_active",
            "flows_created", "records_emitted", "packets_emitted", "octets_emitted")},
        "exporters": {},
    }
    # AF_XDP rings add the XDP_STATISTICS counters (absent on TPACKET_V3).
    for key in XDP_COUNTERS:
        if key in ring:
            out["ring"][key] = ring[key]
    out["table"]["skipped"] = dict(table.get("skipped", {}))
    out["table"]["flows_expired"] = dict(table.get("flows_expired", {}))
    out["table"]["dpi"] = {k: table.get("dpi", {}).get(k, 0) for k in DPI_COUNTERS}
    for group in ("exporters_retired", "exporters"):
        for name, st in (snap.get(group) or {}).items():
            one = {"records_exported": st.get("records_exported", 0),
                   "records_failed": st.get("records_not_sent", 0)
                   + st.get("records_not_exportable", 0),
                   "messages": st.get("messages", 0),
                   "send_errors": st.get("send_errors", 0),
                   "records_handed": st.get("records_handed", 0),
                   "records_pending": st.get("records_pending", 0),
                   "not_sent_by": dict(st.get("records_not_sent_by", {}))}
            prev = out["exporters"].get(name)
            out["exporters"][name] = one if prev is None else add(prev, one)
    return out


def add(a: Any, b: Any) -> Any:
    """Counter-wise sum of two nested dicts of counters."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: add(a[k], b[k]) if k in a and k in b else (b[k] if k in b else a[k])
                for k in {**a, **b}}
    if type(a) in (int, float) and type(b) in (int, float):
        return a + b
    return b


def total(items: list[dict]) -> dict:
    out: dict = counters(None)
    for c in items:
        out = add(out, c)
    return out


def held(c: dict) -> dict:
    """What a reader holds but has not exported: lost if it dies."""
    t = c["table"]
    return {"flows": t["flows_active"],
            "packets": t["packets_accepted"] - t["packets_emitted"],
            "octets": t["octets_accepted"] - t["octets_emitted"]}


def retired(c: dict) -> dict:
    """Counters of an exited reader: its flows are no longer active."""
    out = json.loads(json.dumps(c))
    out["table"]["flows_active"] = 0
    if "dpi" in out["table"]:
        out["table"]["dpi"]["pool_in_use"] = 0
    return out


def records_exported(c: dict) -> int:
    return sum(e["records_exported"] for e in c["exporters"].values())


def document(readers, slots, *, pid: int, generation: int, uptime_s: float) -> dict:
    """The probe's stats document from the supervisor's reader handles
    (``ReaderProcess``) and their heartbeat slots: per reader its counters
    (exited incarnations included), state, restarts and lost flows; then the
    totals."""
    rows, running = [], 0
    for r in readers:
        slot = slots[r.spec.index]
        live = counters(slot.snapshot()) if r.alive else counters(None)
        c = add(r.history, live) if r.history else live
        if r.alive:
            state = heartbeat.STATE_NAMES.get(slot.header()["state"], "?")
        else:
            state = "waiting_interface" if getattr(r, "iface_check_at", None) else "dead"
        running += state == "running"
        rows.append({"index": r.spec.index, "iface": r.spec.iface, "cpu": r.spec.cpu,
                     "pid": r.pid, "state": state, "restarts": r.restarts,
                     "lost": r.lost, "counters": c,
                     # seconds since the reader last made progress (a loop
                     # turn, idle or not) and what it holds unexported now
                     "heartbeat_age_s": round(slot.beat_age_s(), 3) if r.alive else None,
                     "held": slot.held() if r.alive else dict(r.lost, flows=0, packets=0, octets=0)})
    lost = {"flows": 0, "packets": 0, "octets": 0}
    for r in readers:
        lost = add(lost, r.lost)
    return {"pid": pid, "generation": generation, "uptime_s": round(uptime_s, 3),
            "running": running, "readers": rows,
            "total": total([x["counters"] for x in rows]),
            "restarts": sum(r.restarts for r in readers), "lost": lost}


def status_line(doc: dict) -> str:
    """One line for systemd's STATUS=."""
    t = doc["total"]
    return (f"{doc['running']}/{len(doc['readers'])} readers running; "
            f"{t['ring']['packets']} packets, {t['ring']['drops']} dropped; "
            f"{t['table']['flows_active']} flows active; "
            f"{records_exported(t)} records exported; {doc['restarts']} restarts")


# ------------------------------------------------------------------ server

class LoopServer:
    """A non-blocking listening socket served from the supervisor's main
    loop (no thread: the supervisor forks): ``handle()`` answers every
    pending connection with ``answer(conn)`` and closes it."""

    sock: socket.socket | None = None

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock else -1

    def handle(self) -> None:
        while self.sock is not None:
            try:
                conn, _ = self.sock.accept()
            except OSError:          # BlockingIOError: nothing pending
                return
            try:
                conn.settimeout(1.0)
                self.answer(conn)
            except OSError:
                pass
            finally:
                conn.close()

    def answer(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class StatsServer(LoopServer):
    """A unix stream socket; each client gets one JSON document."""

    def __init__(self, path: str, provider: Callable[[], dict], log: Any) -> None:
        self.path = path
        self.provider = provider
        self.log = log

    def open(self) -> bool:
        """Bind the socket; False (and a warning) if it cannot be served."""
        if not self.path:
            return False
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            if os.path.exists(self.path):
                if _alive(self.path):
                    self.log.warning("stats_socket_in_use", path=self.path)
                    return False
                os.unlink(self.path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock.bind(self.path)
            os.chmod(self.path, 0o660)
            sock.listen(16)
            sock.setblocking(False)
        except OSError as exc:
            self.log.warning("stats_socket_failed", path=self.path, error=str(exc))
            return False
        self.sock = sock
        return True

    def answer(self, conn: socket.socket) -> None:
        conn.sendall(json.dumps(self.provider(), separators=(",", ":")).encode())

    def close(self) -> None:
        if self.sock is not None:
            super().close()
            try:
                os.unlink(self.path)
            except OSError:
                pass


def _alive(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(path)
            return True
        except OSError:
            return False


class StatsUnavailable(FlowprobeError):
    exit_code = ExitCode.FAILURE


def fetch(path: str, timeout_s: float = 5.0) -> dict:
    """The running probe's stats document."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        try:
            s.connect(path)
        except OSError as exc:
            raise StatsUnavailable(f"{path}: cannot reach a running flowprobe "
                                   f"({exc.strerror or exc})") from None
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return json.loads(b"".join(chunks))


# ------------------------------------------------------------------ CLI

def add_parser(sub: Any) -> None:
    p = sub.add_parser("stats", help="print the counters of a running `flowprobe run`")
    p.add_argument("--socket", metavar="PATH",
                   help=f"stats socket (supervisor.stats_socket; default {DEFAULT_SOCKET})")
    p.add_argument("-c", "--config", metavar="CONFIG",
                   help="take the socket path from this config file")
    p.add_argument("--json", action="store_true", help="print the raw JSON document")
    p.set_defaults(handler=cmd_stats)


def cmd_stats(args: argparse.Namespace) -> int:
    path = args.socket
    if not path:
        if args.config:
            path = load_config(args.config).supervisor.stats_socket
        else:
            path = DEFAULT_SOCKET
    doc = fetch(path)
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(doc))
    return ExitCode.OK


def format_dpi(d: dict) -> str:
    """One line of application identification counters."""
    return (f"applications: conversations inspected {d.get('inspected', 0)} (detected "
            f"{d.get('detected', 0)}, guessed {d.get('guessed', 0)}, unknown "
            f"{d.get('unknown', 0)}), no state {d.get('no_state', 0)}, packets inspected "
            f"{d.get('packets', 0)}, nDPI states in use {d.get('pool_in_use', 0)} "
            f"(peak {d.get('pool_peak', 0)})\n")


def _line(name: str, c: dict, width: int) -> str:
    t, r = c["table"], c["ring"]
    exp = sum(e["records_exported"] for e in c["exporters"].values())
    fail = sum(e["records_failed"] for e in c["exporters"].values())
    return (f"{name:<{width}} {r['packets']:>12} {r['drops']:>8} {r['freezes']:>7} "
            f"{t['packets_accepted']:>12} {sum(t['skipped'].values()):>9} "
            f"{t['flows_active']:>9} {t['flows_created']:>10} "
            f"{sum(t['flows_expired'].values()):>10} {exp:>10} {fail:>7}\n")


def render(doc: dict) -> str:
    """A human table: one line per reader and a total, then the details.
    The first column is as wide as its longest name: nothing is cut."""
    names = [f"{r['index']} {r['iface']} cpu{r['cpu']} pid{r['pid']} {r['state']}"
             for r in doc.get("readers", [])]
    width = max(len(n) for n in [*names, "reader", "total"])
    out = [f"flowprobe pid {doc.get('pid')}  readers {doc.get('running', 0)}/"
           f"{len(doc.get('readers', []))} running  config generation "
           f"{doc.get('generation')}  uptime {doc.get('uptime_s', 0):.0f} s\n",
           f"{'reader':<{width}} {'ring_pkts':>12} {'drops':>8} {'freezes':>7} "
           f"{'accepted':>12} {'skipped':>9} {'active':>9} {'created':>10} "
           f"{'expired':>10} {'exported':>10} {'failed':>7}\n"]
    for name, r in zip(names, doc.get("readers", [])):
        out.append(_line(name, r["counters"], width))
    tot = doc["total"]
    out.append(_line("total", tot, width))
    t = tot["table"]
    skipped = {k: v for k, v in t["skipped"].items() if v}
    out.append(f"skipped by reason: {json.dumps(skipped) if skipped else 'none'}\n")
    out.append(f"flows expired by reason: {json.dumps(t['flows_expired'])}\n")
    out.append(format_dpi(t.get("dpi") or {}))
    for name, e in tot["exporters"].items():
        out.append(f"exporter {name}: records exported {e['records_exported']}, "
                   f"failed {e['records_failed']}, messages {e['messages']}, "
                   f"send errors {e['send_errors']}, queued {e.get('records_pending', 0)}; "
                   f"not sent by reason: {json.dumps(e.get('not_sent_by') or {})}\n")
    lost = doc.get("lost", {})
    out.append(f"restarts {doc.get('restarts', 0)}; lost with dead readers: "
               f"flows {lost.get('flows', 0)}, packets {lost.get('packets', 0)}\n")
    return "".join(out)
