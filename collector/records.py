"""Data records decoded by a template as it was received (IPFIX or v9).

A ``ReceivedTemplate`` is what an exporter announced: its fields
(``ReceivedField``: IE identity, wire length, IANA name and type) and its
scope count. It decodes one record into a dict keyed by IANA names with
JSON-ready values (addresses as strings, times as integers, octet arrays as
hex). Fixed-length layouts the ``ipfix`` package can handle are decoded by
its ``Template.decode_from`` (one struct unpack per record); the rest
(variable-length fields, reduced-length sizes it has no table for, v9 scope
fields) by hand here.

The names say "received" so that they never shadow exporters/templates.py's
``Field`` and ``Template``, which describe what flowprobe sends.
"""

from __future__ import annotations

import ipaddress
import struct
from datetime import datetime, timedelta

import ipfix.ie
import ipfix.template
import ipfix.types

ipfix.ie.use_iana_default()
ipfix.ie.use_5103_default()  # biflow reverse IEs (PEN 29305)

# ntop's enterprise elements (PEN 35632) that flowprobe exports with the
# application (exporters/templates.py): L7_PROTO, nDPI's app protocol id,
# named as the JSON lines key of the same value. NetFlow v9 has no
# enterprise numbers: nProbe (and flowprobe) send ntop's element N as field
# type NTOP_BASE_ID + N (L7_PROTO: 57590), mapped back here.
NTOP_PEN = 35632
NTOP_BASE_ID = 57472
ipfix.ie.for_spec("ndpiAppProtocol(35632/118)<unsigned16>[2]")

VARLEN = 65535
_EPOCH = datetime(1970, 1, 1)
_NTP_OFFSET_S = 2208988800
_U32 = 0xFFFFFFFF
# The last millisecond a dateTimeMilliseconds value may name (9999-12-31,
# what datetime and most consumers can represent); a larger value is out of
# range: the field is left out of its record, which is flagged (`_invalid`).
MAX_DATETIME_MS = 253402300799999


def _ntop_known(num: int) -> bool:
    try:
        ipfix.ie.for_spec("(%d/%d)" % (NTOP_PEN, num))
    except (ValueError, KeyError):
        return False
    return True


class DecodeError(Exception):
    """A message that cannot be framed (counted as malformed)."""


class ReceivedField:
    """One template field: IE identity, wire length, name and type name."""
    __slots__ = ("pen", "num", "length", "name", "type", "known")

    def __init__(self, pen: int, num: int, length: int, name: str | None = None):
        if pen == 0 and NTOP_BASE_ID <= num < VARLEN and _ntop_known(num - NTOP_BASE_ID):
            pen, num = NTOP_PEN, num - NTOP_BASE_ID    # v9: ntop's element
        self.pen, self.num, self.length = pen, num, length
        self.known = False
        if name:  # a v9 scope field: not an IANA IE, an unsigned integer
            self.name, self.type = name, "unsigned"
            return
        try:
            elem = ipfix.ie.for_spec("(%d/%d)" % (pen, num))
            self.name, self.type = elem.name, elem.type.roottype.name
            self.known = True
        except (ValueError, KeyError):
            self.name, self.type = "_ipfix_%d_%d" % (pen, num), "octetArray"


class ReceivedTemplate:
    """A (options) template as received; `pkg` is the ipfix-package template
    used for fast decoding when the package can handle this layout: fixed
    lengths and registered IEs only, because the package registers every
    unknown (enterprise, id) it is shown in a process-wide table that nothing
    ever shrinks (random enterprise numbers in templates would grow it for
    ever)."""

    def __init__(self, tid: int, fields: list[ReceivedField], scope_count: int = 0):
        self.tid, self.fields, self.scope_count = tid, fields, scope_count
        self.varlen = any(f.length == VARLEN for f in fields)
        self.min_length = sum(1 if f.length == VARLEN else f.length for f in fields)
        self.pkg = None
        if not self.varlen and all(f.known for f in fields):
            try:
                tmpl = ipfix.template.Template(tid)
                for f in fields:
                    tmpl.append(ipfix.ie.for_template_entry(f.pen, f.num, f.length))
                tmpl.finalize()
                if tmpl.packplan.st.size == self.min_length:
                    self.pkg = tmpl
            except (ipfix.types.IpfixTypeError, ValueError, struct.error):
                self.pkg = None

    def decode(self, buf: memoryview, offset: int) -> tuple[dict, int]:
        """Decode one record at offset; return (dict, next offset). A
        dateTimeMilliseconds value past MAX_DATETIME_MS is left out and its
        name listed in the record's `_invalid`: one bad field costs its
        record's time, not the message."""
        if self.pkg is not None:
            try:
                vals, end = self.pkg.decode_from(buf, offset)
            except (ValueError, OverflowError):
                pass  # a value the package cannot represent: by hand below
            else:
                return {f.name: _from_pkg(f, v) for f, v in zip(self.fields, vals)}, end
        rec = {}
        for f in self.fields:
            length = f.length
            if length == VARLEN:
                length = buf[offset]
                offset += 1
                if length == 255:
                    length = int.from_bytes(buf[offset:offset + 2], "big")
                    offset += 2
            raw = bytes(buf[offset:offset + length])
            if len(raw) < length:
                raise DecodeError("record runs past its set")
            value = _from_raw(f.type, raw)
            if f.type == "dateTimeMilliseconds" and value > MAX_DATETIME_MS:
                rec.setdefault("_invalid", []).append(f.name)
            else:
                rec[f.name] = value
            offset += length
        return rec, offset


def _from_raw(typ: str, raw: bytes):
    """Hand decoding of one value of an IPFIX abstract type (RFC 7011 s6)."""
    if typ.startswith("unsigned") or typ.startswith("dateTimeSec") \
            or typ == "dateTimeMilliseconds":
        return int.from_bytes(raw, "big")
    if typ.startswith("signed"):
        return int.from_bytes(raw, "big", signed=True)
    if typ in ("dateTimeMicroseconds", "dateTimeNanoseconds") and len(raw) == 8:
        sec, frac = struct.unpack("!II", raw)
        ns = (sec - _NTP_OFFSET_S) * 10**9 + (frac * 10**9 >> 32)
        return ns // 1000 if typ == "dateTimeMicroseconds" else ns
    if typ in ("ipv4Address", "ipv6Address") and len(raw) in (4, 16):
        return str(ipaddress.ip_address(raw))
    if typ == "macAddress":
        return ":".join("%02x" % b for b in raw)
    if typ == "float64" and len(raw) == 8:
        return struct.unpack("!d", raw)[0]
    if typ == "float32" and len(raw) == 4:
        return struct.unpack("!f", raw)[0]
    if typ == "boolean" and len(raw) == 1:
        return raw[0] == 1
    if typ == "string":   # a fixed-length string ends at its first NUL (padding)
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    return raw.hex()


def _from_pkg(f: ReceivedField, v):
    """Turn a value decoded by the ipfix package into its JSON-ready form."""
    if isinstance(v, datetime):
        delta = v - _EPOCH
        if f.type == "dateTimeSeconds":
            return delta // timedelta(seconds=1)
        if f.type == "dateTimeMilliseconds":
            return delta // timedelta(milliseconds=1)
        us = delta // timedelta(microseconds=1)
        return us if f.type == "dateTimeMicroseconds" else us * 1000
    if isinstance(v, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return _from_raw(f.type, bytes(v))
    if isinstance(v, str):   # a fixed-length string ends at its first NUL (padding)
        return v.split("\0", 1)[0]
    return v


def uptime_age(uptime: int, stamp: int) -> int:
    """How many ms before the header's sysUptime a first/last switched stamp
    lies: a signed 32-bit difference, so a stamp from before a 32-bit uptime
    wrap is in the past and a stamp a little after the header clock (an
    exporter whose header clock is truncated to whole seconds) is not
    mistaken for one 49.7 days old."""
    return ((uptime - stamp + 0x80000000) & _U32) - 0x80000000
