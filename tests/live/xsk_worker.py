"""Flow-capture worker for the AF_XDP live tests, run in the capture namespace.

Opens one ring through the production factory (``driver.capture.open_ring``:
a TPACKET_V3 ring or an XskRing, per ``--backend``), feeds a FlowTable,
prints ``READY <json>`` once the ring is open, and reads. A line ``DONE`` on
stdin means the sender finished: the worker drains until ``--expect`` frames
were read or ``--idle-s`` passes without one (bounded by ``--max-s``), ends
every flow and prints one JSON line {"records", "ring", "table"}.
"""
import argparse
import dataclasses
import json
import select
import sys
import time

from flowprobe.config.schema import Config, validate
from flowprobe.probe.flowtable.table import FlowTable, iter_records
from flowprobe.logs import configure_logging
from flowprobe.driver.capture import open_ring

LINKTYPE_ETHERNET = 1


def stdin_line(timeout):
    r, _, _ = select.select([sys.stdin], [], [], timeout)
    return sys.stdin.readline().strip() if r else None


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("iface")
    ap.add_argument("--backend", default="afxdp")
    ap.add_argument("--xdp-mode", default="auto")
    ap.add_argument("--wait", default="sleep")
    ap.add_argument("--umem-frames", type=int, default=8192)
    ap.add_argument("--frame-size", type=int, default=2048)
    ap.add_argument("--expect", type=int, default=0)
    ap.add_argument("--idle-s", type=float, default=1.0)
    ap.add_argument("--max-s", type=float, default=60.0)
    ap.add_argument("--hold", action="store_true",
                    help="read nothing until DONE (forces a ring overrun)")
    args = ap.parse_args(argv)

    configure_logging("info", "json")   # stderr: stdout is the protocol
    base = Config()
    cfg = dataclasses.replace(base, capture=dataclasses.replace(
        base.capture, backend=args.backend, xdp_mode=args.xdp_mode,
        xdp_wait=args.wait, umem_frames=args.umem_frames,
        frame_size=args.frame_size, block_size=1 << 20, block_count=16,
        block_timeout_ms=5),
        flow=dataclasses.replace(base.flow, idle_timeout_s=600.0,
                                 active_timeout_s=600.0))
    errors = validate(cfg)
    if errors:
        sys.exit("; ".join(errors))
    records = []
    table = None

    def sink(recs, n):
        records.extend(iter_records(recs, n))

    ring = open_ring(cfg, args.iface, 0)
    table = FlowTable(cfg.flow, sink, ifindex=ring.ifindex)
    batch = table.packet_batch(ring.block_capacity)
    info = {"backend": args.backend}
    if args.backend == "afxdp":
        info.update(xdp_mode=ring.xdp_mode, zerocopy=ring.zerocopy,
                    prog_id=ring.program.prog_id,
                    stale_removed=ring.program.stale_removed)
    print("READY " + json.dumps(info), flush=True)

    walked = 0
    done = False
    deadline = time.monotonic() + args.max_s
    last = time.monotonic()
    while time.monotonic() < deadline:
        if not done and stdin_line(1 if args.hold else 0) == "DONE":
            done = True
            last = time.monotonic()
        if args.hold and not done:
            continue
        while True:
            n = ring.next_block(batch.address, batch.cap, 5)
            if n:
                table.ingest(LINKTYPE_ETHERNET, batch, n)
                walked += n
                last = time.monotonic()
            if ring.release_block():
                break
        if done and ((args.expect and walked >= args.expect) or
                     time.monotonic() - last > args.idle_s):
            break
    table.flush()
    ring_stats = ring.stats()
    ring.close()
    print(json.dumps({"records": records, "ring": ring_stats,
                      "table": table.stats(), "walked": walked}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
