"""Capture side of the live tests, run inside the capture namespace.

Opens one or more Rings (a fanout group when --rings > 1), prints
``READY <json>`` once they are set up, then reads. With --hold it does not
read until a line ``GO`` arrives on stdin (so a burst can overrun a tiny
ring). A line ``DONE`` means the sender finished: the worker drains until
--expect packets were walked or --idle-s passes without a packet (bounded
by --max-s), then prints one JSON line with per-ring packets and stats.

The ft_pkt array is allocated here from an ABI-mode ffi that reads
include/ft_records.h (the flow table's own allocator replaces it in
production).
"""
import argparse
import json
import select
import sys
import time
from pathlib import Path

import cffi

from flowprobe.driver.afpacket import Ring
from flowprobe.logs import configure_logging

FT_RECORDS_H = Path(__file__).resolve().parents[2] / "include" / "ft_records.h"


def stdin_line(timeout):
    r, _, _ = select.select([sys.stdin], [], [], timeout)
    return sys.stdin.readline().strip() if r else None


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("iface")
    ap.add_argument("--rings", type=int, default=1)
    ap.add_argument("--fanout-group", type=int, default=0)
    ap.add_argument("--filter", default="")
    ap.add_argument("--snaplen", type=int, default=2048)
    ap.add_argument("--block-size", type=int, default=1 << 16)
    ap.add_argument("--block-count", type=int, default=16)
    ap.add_argument("--frame-size", type=int, default=2048)
    ap.add_argument("--block-timeout-ms", type=int, default=5)
    ap.add_argument("--sampling-rate", type=int, default=1)
    ap.add_argument("--sampling-mode", default="deterministic")
    ap.add_argument("--cap", type=int, default=0,
                    help="packet array size (default: a whole block)")
    ap.add_argument("--hold", action="store_true")
    ap.add_argument("--no-data", action="store_true")
    ap.add_argument("--expect", type=int, default=0)
    ap.add_argument("--idle-s", type=float, default=0.5)
    ap.add_argument("--max-s", type=float, default=30.0)
    args = ap.parse_args(argv)

    configure_logging("info", "json")   # stderr: stdout is the protocol
    ffi = cffi.FFI()
    ffi.cdef(FT_RECORDS_H.read_text())
    rings = [Ring(args.iface, filter_expr=args.filter, snaplen=args.snaplen,
                  block_size=args.block_size, block_count=args.block_count,
                  frame_size=args.frame_size,
                  block_timeout_ms=args.block_timeout_ms,
                  fanout_group=args.fanout_group if args.rings > 1 else 0,
                  sampling_rate=args.sampling_rate,
                  sampling_mode=args.sampling_mode)
             for _ in range(args.rings)]
    cap = args.cap or max(r.block_capacity for r in rings)
    arr = ffi.new("struct ft_pkt[]", cap)
    addr = int(ffi.cast("uintptr_t", arr))
    print("READY " + json.dumps({"fanout_flags": [r.fanout_flags for r in rings],
                                 "capacity": cap}), flush=True)
    if args.hold:
        while stdin_line(1.0) != "GO":
            pass
    packets = [[] for _ in rings]
    walked = 0
    done = False
    deadline = time.monotonic() + args.max_s
    last = time.monotonic()
    walk_ns = 0
    while time.monotonic() < deadline:
        if not done and stdin_line(0) == "DONE":
            done = True
            last = time.monotonic()
        got = 0
        for i, ring in enumerate(rings):
            timeout_ms = 2
            while True:   # one block; several calls when it outgrows the array
                t0 = time.perf_counter_ns()
                n = ring.next_block(addr, cap, timeout_ms=timeout_ms)
                walk_ns += time.perf_counter_ns() - t0
                got += n
                if not args.no_data:
                    for j in range(n):
                        p = arr[j]
                        packets[i].append([p.caplen, p.wirelen, p.vlan_valid,
                                           p.vlan_tci,
                                           ffi.buffer(p.data, p.caplen)[:].hex(),
                                           p.ts_ns, p.ifindex])
                if ring.release_block():
                    break
                timeout_ms = 0
        walked += got
        if got:
            last = time.monotonic()
        if done and ((args.expect and walked >= args.expect and
                      time.monotonic() - last > 0.2) or
                     time.monotonic() - last > args.idle_s):
            break
    stats = [r.stats() for r in rings]
    for r in rings:
        r.close()
    print(json.dumps({"packets": packets, "stats": stats, "walk_ns": walk_ns}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
