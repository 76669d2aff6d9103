"""A ZeroMQ subscriber standing in for ntopng inside a test namespace: it
connects to every endpoint given (as ntopng -i tcp://A,tcp://B does),
collects flow messages until SIGTERM, then prints one JSON object: per
source id the message ids seen, and every record decoded from TLV."""
from __future__ import annotations

import json
import signal
import sys

import zmq

from flowprobe.exporters.ntopng import tlv_to_objects


def main(endpoints: list[str]) -> int:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    for e in endpoints:
        sock.connect(e)
    sock.setsockopt(zmq.SUBSCRIBE, b"flow")
    print("ready", flush=True)
    ids: dict[int, list[int]] = {}
    records = []
    while not stop or sock.poll(500):
        if not sock.poll(100):
            continue
        head, payload = sock.recv_multipart()
        ids.setdefault(head[17], []).append(int.from_bytes(head[20:24], "big"))
        records.extend(tlv_to_objects(payload))
    json.dump({"ids": ids, "records": records}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
