"""Write a seeded synthetic capture (and optionally its ground truth).

    python bench/gen_capture.py OUT.pcap --packets N --flows M --seed S \
        [--truth OUT.json] [--pcapng] [--nsec] [--gap-us G] [--malformed]

Thin wrapper over tests/support/synth.py; prints one JSON summary line on stdout.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "support"))
import synth  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="capture file to write")
    ap.add_argument("--packets", type=int, required=True)
    ap.add_argument("--flows", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--truth", metavar="JSON", help="also write the ground truth here")
    ap.add_argument("--pcapng", action="store_true", help="pcapng instead of classic pcap")
    ap.add_argument("--nsec", action="store_true", help="nanosecond timestamps")
    ap.add_argument("--gap-us", type=int, default=1, help="mean inter-packet gap (us)")
    ap.add_argument("--start-ns", type=int, default=synth.DEFAULT_START_NS)
    ap.add_argument("--malformed", action="store_true", help="add skipped/partial frames")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    truth = synth.generate(a.out, flows=a.flows, packets=a.packets, seed=a.seed,
                           fmt="pcapng" if a.pcapng else "pcap", nsec=a.nsec,
                           start_ns=a.start_ns, gap_us=a.gap_us, malformed=a.malformed,
                           truth=a.truth is not None)
    if a.truth:
        truth.to_json(a.truth)
    print(json.dumps({"file": a.out, "frames": truth.frames, "packets": truth.packets,
                      "octets": truth.octets, "flows": len(truth.flows) or None,
                      "seconds": round(time.perf_counter() - t0, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
