"""`make run`: the live demo, end to end, on a private veth (needs root).

1. two fresh network namespaces ``fpdemoXXXXc`` (capture) and
   ``fpdemoXXXXs`` (sender) joined by a veth pair; quiet (IPv6 off),
   wire-like frames (sender offloads off), lo up in the capture namespace;
2. ``flowprobe nic prepare`` on the capture end;
3. the built-in collector (``flowprobe collect``) on 127.0.0.1 and
   ``flowprobe run`` with 2 readers exporting IPFIX to it, both in the
   capture namespace;
4. the bundled synthetic capture probe/data/demo.pcap (198.18.0.0/15,
   made by tests/support/synth.py) replayed out of the sender end by
   tools/sender.py;
5. the flows the collector received, the probe's stats, then SIGTERM and
   a full cleanup (namespaces deleted even on failure or Ctrl-C).

A set-up step that fails ends the demo with one line, the command and its
stderr, and exit status 2 (no traceback).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO_PCAP = HERE.parent / "probe" / "data" / "demo.pcap"
SENDER = HERE / "sender.py"
EXIT_SETUP = 2
PORT = 4739
SHOW_FLOWS = 25


class StepFailed(Exception):
    """A command of the demo failed: its argv, exit status and stderr."""

    def __str__(self) -> str:
        argv, status, stderr = self.args
        detail = " ".join(stderr.split()) or "no output on stderr"
        return f"`{' '.join(argv)}` failed ({status}): {detail}"


def sh(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise StepFailed(argv, f"timed out after {timeout:.0f} s",
                         (exc.stderr or b"").decode(errors="replace")) from None
    except OSError as exc:
        raise StepFailed(argv, "could not start", str(exc)) from None
    if check and res.returncode != 0:
        raise StepFailed(argv, f"exit status {res.returncode}", res.stderr)
    return res


def flowprobe(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-m", "flowprobe", *args]


class Demo:
    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:4]
        self.cap = f"fpdemo{tag}c"
        self.snd = f"fpdemo{tag}s"
        self.tmp = Path(tempfile.mkdtemp(prefix="flowprobe-demo-"))
        self.procs: list[subprocess.Popen] = []

    def setup(self) -> None:
        sh("ip", "netns", "add", self.cap)
        sh("ip", "netns", "add", self.snd)
        sh("ip", "link", "add", self.cap, "netns", self.cap, "type", "veth",
           "peer", "name", self.snd, "netns", self.snd)
        for ns in (self.cap, self.snd):
            sh("ip", "netns", "exec", ns, "sh", "-c",
               f"echo 1 > /proc/sys/net/ipv6/conf/{ns}/disable_ipv6")
        sh("ip", "netns", "exec", self.snd, "ethtool", "-K", self.snd, "tso", "off",
           "gso", "off", "tx", "off")
        sh("ip", "netns", "exec", self.cap, "ethtool", "-K", self.cap, "gro", "off")
        for ns in (self.snd, self.cap):
            sh("ip", "netns", "exec", ns, "ip", "link", "set", ns, "up")
        sh("ip", "netns", "exec", self.cap, "ip", "link", "set", "lo", "up")
        sh(*flowprobe(self.cap, "nic", "prepare", self.cap))

    def start(self) -> subprocess.Popen:
        self.flows_out = open(self.tmp / "flows.txt", "w")
        self.collector = subprocess.Popen(
            flowprobe(self.cap, "collect", "--listen", f"udp://127.0.0.1:{PORT}",
                      "--format", "table"),
            stdout=self.flows_out, stderr=open(self.tmp / "collector.log", "w"))
        self.procs.append(self.collector)
        cfg = self.tmp / "probe.yaml"
        cfg.write_text("flow:\n  idle_timeout_s: 2\n"
                       "capture:\n  block_timeout_ms: 5\n"
                       f"supervisor:\n  stats_socket: {self.tmp / 'flowprobe.sock'}\n"
                       f"export:\n  - url: ipfix://127.0.0.1:{PORT}\n"
                       "logging:\n  format: json\n")
        self.probe_log = open(self.tmp / "probe.log", "w+")
        probe = subprocess.Popen(
            flowprobe(self.cap, "run", "-i", self.cap, "-c", str(cfg), "--workers", "2"),
            stdout=subprocess.DEVNULL, stderr=self.probe_log)
        self.procs.append(probe)
        self.wait_log("probe_ready", probe)
        return probe

    def wait_log(self, event: str, proc: subprocess.Popen, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if f'"{event}"' in (self.tmp / "probe.log").read_text():
                return
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        raise StepFailed(["flowprobe", "run"], "did not start",
                         (self.tmp / "probe.log").read_text()[-2000:])

    def stats(self) -> dict:
        from flowprobe.probe.stats import fetch
        return fetch(str(self.tmp / "flowprobe.sock"))

    def run(self) -> int:
        self.setup()
        print(f"demo: veth {self.snd} -> {self.cap} (namespaces {self.snd}, {self.cap})")
        probe = self.start()
        print(f"demo: flowprobe run, 2 readers, IPFIX -> 127.0.0.1:{PORT} "
              f"(flowprobe collect); replaying {DEMO_PCAP.name}")
        out = sh("ip", "netns", "exec", self.snd, sys.executable, str(SENDER),
                 self.snd, str(DEMO_PCAP), "--pps", "5000", "--max-seconds", "20").stdout
        sent = json.loads(out)
        print(f"demo: sent {sent['sent']} frames ({sent['oversize']} oversize skipped, "
              f"{sent['errors']} errors)")
        end = time.monotonic() + 20     # idle timeout 2 s: wait for the exports
        while time.monotonic() < end:
            t = self.stats()["total"]
            if t["table"]["packets_accepted"] >= sent["sent"] and not t["table"]["flows_active"]:
                break
            time.sleep(0.2)
        time.sleep(0.5)
        print(sh(sys.executable, "-m", "flowprobe", "stats", "--socket",
                 str(self.tmp / "flowprobe.sock")).stdout)
        probe.send_signal(signal.SIGTERM)
        code = probe.wait(timeout=60)
        time.sleep(0.3)
        self.collector.send_signal(signal.SIGTERM)
        self.collector.wait(timeout=10)
        self.flows_out.close()
        lines = (self.tmp / "flows.txt").read_text().splitlines()
        flows = [x for x in lines[1:] if x and not x.startswith("#")]
        print(f"demo: the collector received {len(flows)} flow records; the first {SHOW_FLOWS}:")
        print("\n".join(lines[:1] + flows[:SHOW_FLOWS]))
        print(f"demo: flowprobe run exited {code}")
        return 0 if code == 0 and flows else 1

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        sh(*flowprobe(self.cap, "nic", "restore", self.cap), check=False)
        for ns in (self.cap, self.snd):
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


def main() -> int:
    if os.geteuid() != 0:
        print("demo: needs root (network namespaces, AF_PACKET); try sudo make run",
              file=sys.stderr)
        return 1
    demo = Demo()
    try:
        return demo.run()
    except StepFailed as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:
        return 130
    finally:
        demo.cleanup()


if __name__ == "__main__":
    sys.exit(main())
