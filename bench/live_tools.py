"""Plumbing for bench/live.py: the veth pair, CPU accounting, capture tools.

Each capture tool runs as `ip netns exec NS taskset -c CPU TOOL ...` (both
exec, so the Popen pid is the tool itself), is stopped with a signal, and is
reaped with wait4 so its total CPU (its own plus its reaped children's) is
known; the benchmark's CPU window comes from /proc/PID/stat of the process
tree sampled just before the sender starts and just after it ends.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parent.parent
RING_BYTES = 64 << 20          # flowprobe's default ring: 64 blocks of 1 MiB
SNAPLEN = 256                  # flowprobe's default snap length
SOFTFLOWD_LABEL = "softflowd -i"
PREPARE_FAILED: list[str] | None = None   # last `nic prepare` error, if any


def which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def run(argv, timeout=60, check=True) -> subprocess.CompletedProcess:
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and cp.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))}: exit {cp.returncode}: "
                           f"{(cp.stderr or cp.stdout).strip()[-400:]}")
    return cp


# -- CPU of a process tree -------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _process_cpu_s(pid: int) -> float | None:
    """CPU time of a live process (all its threads) in ns resolution, from
    its CPU-time clock (clock_getcpuclockid), or None if gone."""
    clk = ctypes.c_int()
    if _libc.clock_getcpuclockid(pid, ctypes.byref(clk)) != 0:
        return None
    try:
        return time.clock_gettime(clk.value)
    except OSError:
        return None


def _proc_cpu(pid: int) -> tuple[float, list[int]]:
    """CPU seconds of pid (own, precise) plus its reaped children's
    (cutime+cstime, ticks), and its live children."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, []
    f = stat[stat.rindex(")") + 2:].split()
    own = _process_cpu_s(pid)
    if own is None:
        own = (int(f[11]) + int(f[12])) / CLK_TCK
    total = own + (int(f[13]) + int(f[14])) / CLK_TCK
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            kids += [int(c) for c in
                     Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:
        pass
    return total, kids


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by pid and all its descendants."""
    total, todo = 0.0, [pid]
    while todo:
        cpu, kids = _proc_cpu(todo.pop())
        total += cpu
        todo += kids
    return total


# -- the veth pair ------------------------------------------------------------------

class NetnsPair:
    """Two fresh namespaces fp<tag>c (capture end) and fp<tag>s (sender end)
    joined by a veth pair; deleted on exit whatever happens."""

    def __init__(self, tag: str):
        assert tag.startswith("fp")
        self.cap_ns = self.cap_if = tag + "c"
        self.send_ns = self.send_if = tag + "s"

    def argv(self, ns: str, *argv) -> list[str]:
        return ["ip", "netns", "exec", ns, *map(str, argv)]

    def ns_run(self, ns: str, *argv, check=True) -> subprocess.CompletedProcess:
        return run(self.argv(ns, *argv), check=check)

    def __enter__(self) -> "NetnsPair":
        try:
            run(["ip", "netns", "add", self.cap_ns])
            run(["ip", "netns", "add", self.send_ns])
            run(["ip", "link", "add", self.cap_if, "netns", self.cap_ns, "type", "veth",
                 "peer", "name", self.send_if, "netns", self.send_ns])
            for ns, iface in ((self.cap_ns, self.cap_if), (self.send_ns, self.send_if)):
                # before link up: no DAD, router solicitations or MLD
                self.ns_run(ns, "sh", "-c",
                            f"echo 1 > /proc/sys/net/ipv6/conf/{iface}/disable_ipv6")
            self.ns_run(self.send_ns, "ethtool", "-K", self.send_if,
                        "tso", "off", "gso", "off", "tx", "off")
            self.ns_run(self.cap_ns, "ethtool", "-K", self.cap_if, "gro", "off")
            self.ns_run(self.send_ns, "ip", "link", "set", self.send_if, "up")
        except BaseException:
            self.delete()
            raise
        return self

    def prepare_capture_end(self) -> None:
        """`flowprobe nic prepare` (link up, receive-only) in the capture ns."""
        cp = self.ns_run(self.cap_ns, sys.executable, "-m", "flowprobe", "nic", "prepare",
                         self.cap_if, check=False)
        if cp.returncode != 0:
            # still measure the peers: link up and promiscuous by hand, and say so
            global PREPARE_FAILED
            PREPARE_FAILED = (cp.stderr or cp.stdout).strip().splitlines()[-1:] or ["?"]
            self.ns_run(self.cap_ns, "ip", "link", "set", self.cap_if, "promisc", "on", "up")

    def counters(self) -> dict:
        def stats(ns, iface):
            out = self.ns_run(ns, "ip", "-j", "-s", "link", "show", iface).stdout
            return json.loads(out)[0]["stats64"]
        s, c = stats(self.send_ns, self.send_if), stats(self.cap_ns, self.cap_if)
        return {"tx_packets": s["tx"]["packets"], "tx_dropped": s["tx"]["dropped"],
                "rx_packets": c["rx"]["packets"], "rx_dropped": c["rx"]["dropped"]}

    def delete(self) -> None:
        for ns in (self.cap_ns, self.send_ns):
            run(["ip", "netns", "del", ns], check=False)
        Path(f"/run/flowprobe/{self.cap_if}.json").unlink(missing_ok=True)

    def __exit__(self, *exc) -> None:
        self.delete()


# -- a running capture tool ---------------------------------------------------------

class Running:
    def __init__(self, argv: list[str], marker: str | None):
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, errors="replace",
                                     start_new_session=True)
        self.pid = self.proc.pid
        self.out: list[str] = []
        self.err: list[str] = []
        self.ready = threading.Event()
        self.marker = marker
        self.threads = [threading.Thread(target=self._drain, args=(s, b), daemon=True)
                        for s, b in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self.threads:
            t.start()
        self.rusage = None

    def _drain(self, stream, buf) -> None:
        for line in stream:
            buf.append(line)
            if self.marker and self.marker in line:
                self.ready.set()

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def stop(self, sig=signal.SIGINT, timeout=60.0) -> float:
        """Signal, reap with wait4, return the process's total CPU seconds."""
        if self.proc.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while True:
                pid, status, ru = os.wait4(self.pid, os.WNOHANG)
                if pid:
                    self.proc.returncode = os.waitstatus_to_exitcode(status)
                    self.rusage = ru
                    break
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"did not stop within {timeout} s after {sig.name}")
                time.sleep(0.02)
        for t in self.threads:
            t.join(5)
        return self.rusage.ru_utime + self.rusage.ru_stime

    def kill(self) -> None:
        if self.proc.returncode is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


class Tool:
    key = label = binary = ""
    marker: str | None = None
    ready_timeout = 20.0

    def available(self) -> str | None:
        return None if which(self.binary) else f"{self.binary} not installed"

    def argv(self, pair: NetnsPair, workdir: Path) -> list:
        raise NotImplementedError

    def start(self, pair: NetnsPair, workdir: Path, cpu: int) -> Running:
        r = Running(pair.argv(pair.cap_ns, "taskset", "-c", str(cpu),
                              *self.argv(pair, workdir)), self.marker)
        try:
            self.wait_ready(r, workdir)
        except BaseException:
            r.kill()
            raise
        return r

    def wait_ready(self, r: Running, workdir: Path) -> None:
        if not r.ready.wait(self.ready_timeout):
            raise RuntimeError(f"{self.label}: not ready after {self.ready_timeout} s: "
                               f"{r.stderr[-300:]}")
        time.sleep(0.3)

    def before_stop(self, r: Running) -> dict | None:
        return None

    def stop(self, r: Running) -> dict:
        cpu = r.stop(signal.SIGINT)
        return {"cpu_total_s": round(cpu, 3), **self.parse(r)}

    def parse(self, r: Running) -> dict:
        raise NotImplementedError


def _int_before(text: str, words: str) -> int | None:
    m = re.search(r"(\d+)\s+" + words, text)
    return int(m.group(1)) if m else None


class Flowprobe(Tool):
    key, label, binary = "flowprobe", "flowprobe run (afpacket)", "flowprobe"
    marker = "reader_started"
    backend: str | None = None

    def run_help(self) -> str:
        cp = run([sys.executable, "-m", "flowprobe", "run", "-h"], check=False)
        return cp.stdout if cp.returncode == 0 else "ERROR " + (cp.stderr.strip()
                                                                or "?").splitlines()[-1]

    def available(self):
        h = self.run_help()
        return None if "--interface" in h else f"flowprobe run broken: {h[6:]}"

    def argv(self, pair, workdir):
        cfg = workdir / "flowprobe.yaml"
        cfg.write_text("logging:\n  format: json\n")
        extra = []
        help_text = self.run_help()
        if "--workers" in help_text:
            extra += ["--workers", "1"]
        if self.backend:
            extra += ["--backend", self.backend]
        return [sys.executable, "-m", "flowprobe", "run", "-i", pair.cap_if,
                "-c", cfg, *extra]

    def stop(self, r):
        cpu = r.stop(signal.SIGTERM)
        if r.proc.returncode != 0:
            raise RuntimeError(f"flowprobe exit {r.proc.returncode}: {r.stderr[-300:]}")
        return {"cpu_total_s": round(cpu, 3), **self.parse(r)}

    def parse(self, r):
        stopped = [json.loads(line) for line in r.err
                   if '"reader_stopped"' in line and line.lstrip().startswith("{")]
        if not stopped:
            raise RuntimeError("no reader_stopped line: " + r.stderr[-300:])
        seen = sum(s.get("table", {}).get("packets_seen", 0) for s in stopped)
        ring = {}
        for s in stopped:
            for k, v in (s.get("ring") or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    ring[k] = ring.get(k, 0) + v
        return {"captured": seen, "detail": {"ring": ring, "readers": len(stopped)}}


class FlowprobeXdp(Flowprobe):
    key, label = "flowprobe-afxdp", "flowprobe run (afxdp)"
    backend = "afxdp"

    def available(self):
        if not (REPO / "driver" / "afxdp.py").exists():
            return "driver/afxdp.py not there yet"
        h = self.run_help()
        if h.startswith("ERROR "):
            return f"flowprobe run broken: {h[6:]}"
        if "--backend" not in h:
            return "flowprobe run has no --backend"
        return None


class Tcpdump(Tool):
    key, label, binary = "tcpdump", "tcpdump -w /dev/null", "tcpdump"
    marker = "listening on"

    def argv(self, pair, workdir):
        return ["tcpdump", "-i", pair.cap_if, "-w", "/dev/null", "-n", "-s", SNAPLEN,
                "-B", RING_BYTES // 1024, "-Z", "root"]

    def parse(self, r):
        e = r.stderr
        return {"captured": _int_before(e, "packets? captured"),
                "detail": {"received_by_filter": _int_before(e, "packets? received by filter"),
                           "dropped_by_kernel": _int_before(e, "packets? dropped by kernel")}}


class Netsniff(Tool):
    key, label, binary = "netsniff-ng", "netsniff-ng -o /dev/null", "netsniff-ng"
    marker = "Running"

    def argv(self, pair, workdir):
        # -A/-Q: leave host socket memory and IRQ affinity alone
        return ["netsniff-ng", "-i", pair.cap_if, "-o", "/dev/null", "-s", "-A", "-Q",
                "-S", f"{RING_BYTES >> 20}MiB"]

    def parse(self, r):
        t = r.stdout + r.stderr
        incoming = _int_before(t, r"packets incoming")
        unread = re.search(r"\((\d+) unread on exit\)", t)
        passed = _int_before(t, r"packets passed filter")
        failed = _int_before(t, r"packets failed filter")
        captured = passed if passed is not None else incoming
        if captured is not None and unread:
            captured -= int(unread.group(1))
        return {"captured": captured,
                "detail": {"incoming": incoming, "passed_filter": passed,
                           "failed_filter_out_of_space": failed,
                           "unread_on_exit": int(unread.group(1)) if unread else None}}


class Softflowd(Tool):
    key, label, binary = "softflowd", SOFTFLOWD_LABEL, "softflowd"
    max_flows = 262144   # flowprobe's default table size

    def available(self):
        for b in ("softflowd", "softflowctl"):
            if not which(b):
                return f"{b} not installed"
        return None

    def argv(self, pair, workdir):
        self.ctl = workdir / f"sf-{pair.cap_if}.ctl"
        return ["softflowd", "-i", pair.cap_if, "-d", "-m", self.max_flows,
                "-B", RING_BYTES, "-C", SNAPLEN, "-c", self.ctl,
                "-p", workdir / f"sf-{pair.cap_if}.pid"]

    def wait_ready(self, r, workdir):
        deadline = time.monotonic() + self.ready_timeout
        while not self.ctl.exists():
            if r.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"softflowd did not start: {r.stderr[-300:]}")
            time.sleep(0.05)
        time.sleep(0.5)

    def before_stop(self, r):
        st = run([which("softflowctl"), "-c", str(self.ctl), "statistics"], timeout=30).stdout

        def num(pattern):
            m = re.search(pattern, st)
            return int(m.group(1)) if m else None
        received = num(r"Packets received by libpcap:\s*(\d+)")
        dropped = num(r"Packets dropped by libpcap:\s*(\d+)") or 0
        # delivered to softflowd = libpcap's ps_recv (tp_packets, drops included)
        # minus ps_drop; "processed" leaves out non-IP (e.g. MPLS, QinQ) frames
        return {"captured": None if received is None else received - dropped,
                "pcap_received": received, "pcap_dropped": dropped,
                "if_dropped": num(r"Packets dropped by interface:\s*(\d+)"),
                "processed": num(r"Packets processed:\s*(\d+)"),
                "ignored": num(r"Ignored packets:\s*(\d+)"),
                "active_flows": num(r"Number of active flows:\s*(\d+)")}

    def stop(self, r):
        cpu = r.stop(signal.SIGTERM)
        return {"cpu_total_s": round(cpu, 3)}


def all_tools() -> list[Tool]:
    return [Flowprobe(), FlowprobeXdp(), Tcpdump(), Netsniff(), Softflowd()]
