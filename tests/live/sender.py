"""Bounded raw sender: replay the frames of a classic pcap FILE out of IFACE
through an AF_PACKET socket. Only for synthetic captures made by the tests
(never a corpus capture). Prints {"sent", "errors", "seconds"} as JSON.

usage: sender.py IFACE FILE [--pps N] [--max-seconds S]
"""
import argparse
import json
import socket
import struct
import sys
import time

MAX_FRAMES = 2_000_000


def read_pcap(path):
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


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("iface")
    ap.add_argument("file")
    ap.add_argument("--pps", type=int, default=0, help="0: as fast as possible")
    ap.add_argument("--max-seconds", type=float, default=30.0)
    args = ap.parse_args(argv)
    frames = read_pcap(args.file)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # 0: receives nothing
    s.bind((args.iface, 0))
    sent = errors = 0
    t0 = time.monotonic()
    deadline = t0 + args.max_seconds
    for i, fr in enumerate(frames):
        if args.pps and i % 64 == 0:
            ahead = t0 + i / args.pps - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        if time.monotonic() > deadline:
            break
        try:
            s.send(fr)
            sent += 1
        except OSError:
            errors += 1
    s.close()
    json.dump({"sent": sent, "errors": errors,
               "seconds": round(time.monotonic() - t0, 6)}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
