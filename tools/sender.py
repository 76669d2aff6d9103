"""Bounded raw sender for the live demo and tests: replay the frames of a classic pcap
FILE out of IFACE through an AF_PACKET socket. Only for synthetic captures
(the bundled probe/data/demo.pcap, made by tests/support/synth.py, and
the captures the live tests write), only onto a
test veth in a namespace the caller created; never a corpus capture.
Frames larger than the interface MTU allows are skipped and counted.
Prints {"sent", "errors", "oversize", "seconds"} as JSON.

usage: tools/sender.py IFACE FILE [--pps N] [--max-seconds S]
"""
from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time

MAX_FRAMES = 2_000_000
ETH_HLEN, VLAN_HLEN = 14, 4
VLAN_TPIDS = (0x8100, 0x88A8)


def read_pcap(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack_from("<I", data, 0)[0]
    if magic not in (0xA1B2C3D4, 0xA1B23C4D):
        raise SystemExit(f"{path}: not a little-endian classic pcap")
    off, frames = 24, []
    while off + 16 <= len(data) and len(frames) < MAX_FRAMES:
        incl = struct.unpack_from("<I", data, off + 8)[0]
        frames.append(data[off + 16:off + 16 + incl])
        off += 16 + incl
    return frames


def iface_mtu(iface: str) -> int:
    with open(f"/sys/class/net/{iface}/mtu") as fh:
        return int(fh.read())


def max_frame(mtu: int, frame: bytes) -> int:
    tagged = len(frame) >= 14 and struct.unpack_from("!H", frame, 12)[0] in VLAN_TPIDS
    return mtu + ETH_HLEN + (VLAN_HLEN if tagged else 0)


def send(iface: str, frames: list[bytes], pps: int = 0, max_seconds: float = 30.0) -> dict:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: receives nothing
    s.bind((iface, 0))
    mtu = iface_mtu(iface)
    sent = errors = oversize = 0
    t0 = time.monotonic()
    deadline = t0 + max_seconds
    for i, fr in enumerate(frames):
        if pps and i % 64 == 0:
            ahead = t0 + i / pps - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        if time.monotonic() > deadline:
            break
        if len(fr) > max_frame(mtu, fr):
            oversize += 1
            continue
        try:
            s.send(fr)
            sent += 1
        except OSError:
            errors += 1
    s.close()
    return {"sent": sent, "errors": errors, "oversize": oversize,
            "seconds": round(time.monotonic() - t0, 6)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("iface")
    ap.add_argument("file")
    ap.add_argument("--pps", type=int, default=0, help="0: as fast as possible")
    ap.add_argument("--max-seconds", type=float, default=30.0)
    args = ap.parse_args(argv)
    json.dump(send(args.iface, read_pcap(args.file), args.pps, args.max_seconds), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
