"""NetFlow v5 (Cisco) messages: a fixed header and up to 30 fixed records.

No templates and no per-exporter state: ``decode_v5`` turns one datagram
into IANA-named flow dicts, in the same shape as IPFIX and v9 records, and
returns the header's sequence number and engine for the sequence check.
"""

from __future__ import annotations

import ipaddress
import struct

from .records import DecodeError, uptime_age

V5_VERSION = 5
V5_MAX_RECORDS = 30

_V5_HDR = struct.Struct("!HHIIIIBBH")     # ... seq engine_type engine_id sampling
_V5_REC = struct.Struct("!4s4s4sHHIIIIHHxBBBHHBBxx")

# v5 record layout (Cisco), mapped to IANA names in struct order.
_V5_NAMES = ("sourceIPv4Address", "destinationIPv4Address",
             "ipNextHopIPv4Address", "ingressInterface", "egressInterface",
             "packetDeltaCount", "octetDeltaCount", "_first", "_last",
             "sourceTransportPort", "destinationTransportPort",
             "tcpControlBits", "protocolIdentifier", "ipClassOfService",
             "bgpSourceAsNumber", "bgpDestinationAsNumber",
             "sourceIPv4PrefixLength", "destinationIPv4PrefixLength")


def decode_v5(data: bytes) -> tuple[list[dict], int, int]:
    """(flow dicts, sequence number, engine) of one v5 datagram, where
    engine = engine_type << 8 | engine_id (the v5 "observation domain");
    DecodeError when the record count does not fit the datagram."""
    (_, count, uptime, secs, nsecs, seq, etype, eid,
     _sampling) = _V5_HDR.unpack_from(data, 0)
    if len(data) < _V5_HDR.size + count * _V5_REC.size or count > V5_MAX_RECORDS:
        raise DecodeError("v5 count %d, datagram %d" % (count, len(data)))
    boot_ms = secs * 1000 + nsecs // 1_000_000 - uptime
    out = []
    for i in range(count):
        vals = _V5_REC.unpack_from(data, _V5_HDR.size + i * _V5_REC.size)
        rec = dict(zip(_V5_NAMES, vals))
        for k in ("sourceIPv4Address", "destinationIPv4Address",
                  "ipNextHopIPv4Address"):
            rec[k] = str(ipaddress.IPv4Address(rec[k]))
        export_ms = boot_ms + uptime
        rec["flowStartMilliseconds"] = export_ms - uptime_age(uptime, rec.pop("_first"))
        rec["flowEndMilliseconds"] = export_ms - uptime_age(uptime, rec.pop("_last"))
        if rec["protocolIdentifier"] == 1:  # v5 carries ICMP type/code in dst port
            rec["icmpTypeCodeIPv4"] = rec["destinationTransportPort"]
        rec["ipVersion"] = 4
        out.append(rec)
    return out, seq, (etype << 8) | eid
