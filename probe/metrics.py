"""Prometheus endpoint (prometheus-client): the counters of ``flowprobe stats``.

Served from the supervisor's main loop (no thread: the supervisor forks
readers, and a fork while another thread holds a lock is unsafe): a
non-blocking listening socket; each request gets ``generate_latest()`` of a
registry whose one collector reads the same stats document as the socket.

prometheus-client is imported where it is used, deliberately: it is
optional (``check_available`` turns its absence into a config error), and a
probe without ``metrics.listen`` never loads it.
"""
from __future__ import annotations

import socket
from typing import Any, Callable

from flowprobe.config import ConfigError


from flowprobe.probe.stats import DPI_COUNTERS, XDP_COUNTERS, LoopServer


def _families(doc: dict):
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    labels = ["reader", "iface"]
    fam = {
        "ring_packets": CounterMetricFamily("flowprobe_ring_packets", "Packets the ring's filter passed (kernel)", labels=labels),
        "ring_drops": CounterMetricFamily("flowprobe_ring_drops", "Packets the kernel dropped (ring full)", labels=labels),
        "ring_freezes": CounterMetricFamily("flowprobe_ring_freezes", "Ring queue freezes", labels=labels),
        "xdp": CounterMetricFamily("flowprobe_xdp_events", "AF_XDP ring XDP_STATISTICS, by counter", labels=labels + ["counter"]),
        "accepted": CounterMetricFamily("flowprobe_packets_accepted", "Packets accounted in flows", labels=labels),
        "skipped": CounterMetricFamily("flowprobe_packets_skipped", "Packets skipped, by reason", labels=labels + ["reason"]),
        "active": GaugeMetricFamily("flowprobe_flows_active", "Flows held in the table", labels=labels),
        "created": CounterMetricFamily("flowprobe_flows_created", "Flows created", labels=labels),
        "expired": CounterMetricFamily("flowprobe_flows_expired", "Flows expired, by reason", labels=labels + ["reason"]),
        "exported": CounterMetricFamily("flowprobe_records_exported", "Flow records exported", labels=labels + ["exporter"]),
        "failed": CounterMetricFamily("flowprobe_records_failed", "Flow records not exported", labels=labels + ["exporter"]),
        "not_sent": CounterMetricFamily("flowprobe_records_not_sent", "Flow records not sent, by reason", labels=labels + ["exporter", "reason"]),
        "dpi": CounterMetricFamily("flowprobe_dpi_events", "Application identification (nDPI) counters: conversations inspected/detected/guessed/unknown/no_state, packets", labels=labels + ["counter"]),
        "dpi_pool": GaugeMetricFamily("flowprobe_dpi_pool", "nDPI flow states in use, and their peak", labels=labels + ["counter"]),
        "restarts": CounterMetricFamily("flowprobe_reader_restarts", "Reader restarts", labels=labels),
        "lost_flows": CounterMetricFamily("flowprobe_lost_flows", "Flows lost with dead readers", labels=labels),
        "lost_packets": CounterMetricFamily("flowprobe_lost_packets", "Packets lost with dead readers", labels=labels),
    }
    for r in doc.get("readers", []):
        lv = [str(r["index"]), r["iface"]]
        c, t = r["counters"], r["counters"]["table"]
        fam["ring_packets"].add_metric(lv, c["ring"]["packets"])
        fam["ring_drops"].add_metric(lv, c["ring"]["drops"])
        fam["ring_freezes"].add_metric(lv, c["ring"]["freezes"])
        for key in XDP_COUNTERS:
            if key in c["ring"]:
                fam["xdp"].add_metric(lv + [key], c["ring"][key])
        fam["accepted"].add_metric(lv, t["packets_accepted"])
        for reason, v in t["skipped"].items():
            fam["skipped"].add_metric(lv + [reason], v)
        fam["active"].add_metric(lv, t["flows_active"])
        fam["created"].add_metric(lv, t["flows_created"])
        for reason, v in t["flows_expired"].items():
            fam["expired"].add_metric(lv + [reason], v)
        dpi = t.get("dpi") or {}
        for key in DPI_COUNTERS:
            fam["dpi_pool" if key.startswith("pool_") else "dpi"].add_metric(
                lv + [key], dpi.get(key, 0))
        for name, e in c["exporters"].items():
            fam["exported"].add_metric(lv + [name], e["records_exported"])
            fam["failed"].add_metric(lv + [name], e["records_failed"])
            for reason, v in (e.get("not_sent_by") or {}).items():
                fam["not_sent"].add_metric(lv + [name, reason], v)
        fam["restarts"].add_metric(lv, r.get("restarts", 0))
        fam["lost_flows"].add_metric(lv, r.get("lost", {}).get("flows", 0))
        fam["lost_packets"].add_metric(lv, r.get("lost", {}).get("packets", 0))
    return fam.values()


class _Collector:
    def __init__(self, provider: Callable[[], dict]) -> None:
        self.provider = provider

    def collect(self):
        yield from _families(self.provider())


def check_available() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError(["metrics.listen: the prometheus-client package is not "
                           "installed (pip install prometheus-client)"]) from None


class MetricsServer(LoopServer):
    """HTTP/1.0 GET -> text exposition, one short request at a time."""

    def __init__(self, listen: str, provider: Callable[[], dict], log: Any) -> None:
        from prometheus_client import CollectorRegistry
        self.host, _, port = listen.rpartition(":")
        self.port = int(port)
        self.log = log
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(provider))

    def open(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host.strip("[]") or "0.0.0.0", self.port))
        sock.listen(16)
        sock.setblocking(False)
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.log.info("metrics_listening", host=self.host, port=self.port)

    def answer(self, conn: socket.socket) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        request = conn.recv(4096)
        if request.startswith(b"GET "):
            body = generate_latest(self.registry)
            head = (f"HTTP/1.0 200 OK\r\nContent-Type: {CONTENT_TYPE_LATEST}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
        else:
            body = b""
            head = b"HTTP/1.0 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n"
        conn.sendall(head + body)
