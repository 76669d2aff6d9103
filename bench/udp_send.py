"""UDP export cost: one datagram per send (in sendmmsg() batches) against
runs of equal-sized messages sent with segmentation offload (UDP_SEGMENT),
on a replay exporting unpaced IPFIX to a local socket.

    python bench/udp_send.py CAPTURE [--reps N]

Each variant runs `flowprobe replay CAPTURE -c CFG` (CFG: one IPFIX/UDP
export, rate_msgs_s 0, udp_gso false or true) in a fresh process, the
variants interleaved, to a UDP socket bound on 127.0.0.1 that never reads;
prints wall and CPU seconds, messages, send calls and offloaded sends.
Bounded by the capture's size.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile

from run import run_timed   # bench/run.py: /usr/bin/time, timeout, load

VARIANTS = {"datagrams": "false", "gso": "true"}


def one(capture: str, cfg: str) -> dict:
    r = run_timed([sys.executable, "-m", "flowprobe.probe.cli", "replay", capture, "-c", cfg,
                   "--no-dpi", "--max-flows", "2097152", "--idle-timeout", "3600",
                   "--active-timeout", "3600"], timeout=600)
    done = next((json.loads(x) for x in r["stderr"].splitlines()
                 if x.startswith("{") and '"replay_done"' in x), {})
    ex = (done.get("exporters") or [{}])[0]
    tr = ex.get("transport", {})
    return {**r, "messages": ex.get("messages"), "records": ex.get("records_exported"),
            "send_calls": tr.get("send_calls"), "gso_sends": tr.get("gso_sends")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args(argv)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)    # never read
    sink.bind(("127.0.0.1", 0))
    port = sink.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="fpbench-udp-") as tmp:
        cfgs = {}
        for name, gso in VARIANTS.items():
            cfgs[name] = f"{tmp}/{name}.yaml"
            with open(cfgs[name], "w") as f:
                f.write(f"logging:\n  format: json\nexport:\n  - url: ipfix://127.0.0.1:{port}\n"
                        f"    rate_msgs_s: 0\n    udp_gso: {gso}\n")
        for _ in range(a.reps):
            for name in VARIANTS:
                r = one(a.capture, cfgs[name])
                print(f"{name:9} wall {r['wall_s']:6.2f} s  CPU {r['cpu_s']:5.2f} s  "
                      f"messages {r['messages']}  send calls "
                      f"{r['send_calls']}  offloaded sends {r['gso_sends']}  "
                      f"records {r['records']}", flush=True)
    sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
