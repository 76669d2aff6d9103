"""Records encoded per second per core, per format (C encoder + Python
message framing, no transport). Prints one line per format; ``ntopng-tlv``
is the ZeroMQ feed's TLV payloads (exporters/tlv.c), 32 records a message;
``+app`` is the same format with the application (DPI on: IPFIX/v9
applicationName and L7_PROTO, ntopng's L7_PROTO) on labelled records.

    python3 bench/encode.py [--records N] [--repeat R] [--mtu M]
"""
import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))

from flowprobe.exporters._encode import ffi  # noqa: E402
from flowprobe.exporters.base import EncoderConfig  # noqa: E402
from flowprobe.exporters.ipfix import IpfixEncoder  # noqa: E402
from flowprobe.exporters.netflow5 import Netflow5Encoder  # noqa: E402
from flowprobe.exporters.netflow9 import Netflow9Encoder  # noqa: E402
from flowprobe.exporters.ntopng import NtopngEncoder  # noqa: E402

T0 = 1685577600 * 10**9


LABELS = [(91, 126, b"TLS.Google"), (0, 5, b"DNS"), (0, 7, b"HTTP"),
          (188, 126, b"QUIC.Google")]


def records(n, v6_share, seed=1, labelled=False):
    rng = random.Random(seed)
    arr = ffi.new("struct ft_record[]", n)
    for i in range(n):
        r = arr[i]
        v6 = rng.random() < v6_share
        r.ip_version = 6 if v6 else 4
        if v6:
            r.src_addr[0:4] = [0x20, 0x01, 0x0D, 0xB8]
            r.dst_addr[0:4] = [0x20, 0x01, 0x0D, 0xB8]
            r.src_addr[15] = i & 0xFF
        else:
            r.src_addr[0:4] = [198, 18, (i >> 8) & 0xFF, i & 0xFF]
            r.dst_addr[0:4] = [198, 19, 0, 1]
        r.protocol = 6
        r.src_port, r.dst_port = 1024 + i % 60000, 443
        r.packets, r.octets = 1 + i % 100, 64 * (1 + i % 100)
        r.first_ns = T0 + i * 1000
        r.last_ns = r.first_ns + 10**9
        r.end_reason = 1
        if labelled:
            r.app_master, r.app_id, name = LABELS[i % len(LABELS)]
            r.app_source = 1
            ffi.memmove(r.app_name, name, len(name))
    return arr


class NtopngTlv(NtopngEncoder):
    """The ntopng encoder with this bench's constructor."""
    name = "ntopng-tlv"

    def __init__(self, cfg):
        super().__init__(zmq_format="tlv", records_per_message=32,
                         application=cfg.application)


def bench(cls, arr, n, repeat, mtu, application=False):
    enc = cls(EncoderConfig(mtu=mtu, application=application))
    addr = int(ffi.cast("uintptr_t", arr))
    best = 0.0
    for _ in range(repeat):
        t = time.perf_counter()
        done = 0
        for block in enc.encode_blocks(addr, n):     # as the exporter takes them
            done += block.records
        dt = time.perf_counter() - t
        best = max(best, done / dt)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--mtu", type=int, default=1400)
    a = ap.parse_args()
    for v6_share in (0.0, 0.35):
        arr = records(a.records, v6_share)
        for cls in (Netflow5Encoder, Netflow9Encoder, IpfixEncoder, NtopngTlv):
            rate = bench(cls, arr, a.records, a.repeat, a.mtu)
            print(f"encode {cls.name:<10} mtu={a.mtu} ipv6={v6_share:.0%}: "
                  f"{rate / 1e6:6.2f} M records/s per core")
        arr = records(a.records, v6_share, labelled=True)
        for cls in (Netflow9Encoder, IpfixEncoder, NtopngTlv):
            rate = bench(cls, arr, a.records, a.repeat, a.mtu, application=True)
            name = cls.name + "+app"
            print(f"encode {name:<10} mtu={a.mtu} ipv6={v6_share:.0%}: "
                  f"{rate / 1e6:6.2f} M records/s per core")


if __name__ == "__main__":
    main()
