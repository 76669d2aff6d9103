"""Decode NetFlow v5, NetFlow v9 and IPFIX messages into IANA-named dicts.

One `MessageDecoder` serves every exporter a collector hears from. It keeps
the template cache per (exporter, domain, template id) and the sequence
state per (exporter, domain), and counts every outcome in `counters`.

Who decodes what:
  - IPFIX information elements (names, ids, types) come from the `ipfix`
    package's IANA registry, for v9 too: v9 field types 1..127 are the same
    numbers as the IANA IEs (RFC 3954 became RFC 5102).
  - IPFIX data records of fixed-length templates are decoded by the package's
    `Template.decode_from` (one struct unpack per record).
  - By hand, and why:
      * message/set framing: `ipfix.message.MessageBuffer` keys templates by
        (domain, id) only, not per exporter, ignores template withdrawal,
        raises on a bad set instead of letting us count it, and does not
        check sequence numbers;
      * template records: `decode_template_from` raises on reduced-length
        sizes it has no table for (e.g. unsigned64 in 3 octets);
      * variable-length records: `Template.decode_from` skips every varlen
        field when the first field is varlen (`if not self.varlenslice`);
      * NetFlow v5 and v9: the package has no v5 at all and its v9 reader
        (`ipfix.v9pdu`) works on streams only, keys templates by source id
        only and knows no v9 options scope types.

Output: flows are dicts keyed by IANA names with JSON-ready values
(addresses as strings, times as integer epoch milliseconds in
flowStartMilliseconds/flowEndMilliseconds, octet arrays as hex). Options
records carry `"_options": True` and `"_scope"` (the names of their scope
fields).
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from datetime import datetime, timedelta

import structlog
import ipfix.ie
import ipfix.template
import ipfix.types

ipfix.ie.use_iana_default()
ipfix.ie.use_5103_default()  # biflow reverse IEs (PEN 29305)

log = structlog.get_logger("flowprobe.collector")

IPFIX_VERSION = 10
V9_VERSION = 9
V5_VERSION = 5
VARLEN = 65535

_IPFIX_HDR = struct.Struct("!HHIII")      # version length export_time seq odid
_V9_HDR = struct.Struct("!HHIIII")        # version count uptime secs seq source
_V5_HDR = struct.Struct("!HHIIIIBBH")     # ... seq engine_type engine_id sampling
_V5_REC = struct.Struct("!4s4s4sHHIIIIHHxBBBHHBBxx")
_SET_HDR = struct.Struct("!HH")
_EPOCH = datetime(1970, 1, 1)
_NTP_OFFSET_S = 2208988800
_U32 = 0xFFFFFFFF

# v9 options scope field types (RFC 3954 section 6.1): not IANA IEs.
V9_SCOPE_NAMES = {1: "v9ScopeSystem", 2: "v9ScopeInterface",
                  3: "v9ScopeLineCard", 4: "v9ScopeCache", 5: "v9ScopeTemplate"}

# v5 record layout (Cisco), mapped to IANA names in struct order.
_V5_NAMES = ("sourceIPv4Address", "destinationIPv4Address",
             "ipNextHopIPv4Address", "ingressInterface", "egressInterface",
             "packetDeltaCount", "octetDeltaCount", "_first", "_last",
             "sourceTransportPort", "destinationTransportPort",
             "tcpControlBits", "protocolIdentifier", "ipClassOfService",
             "bgpSourceAsNumber", "bgpDestinationAsNumber",
             "sourceIPv4PrefixLength", "destinationIPv4PrefixLength")


class DecodeError(Exception):
    """A message that cannot be framed (counted as malformed)."""


class Field:
    """One template field: IE identity, wire length, name and type name."""
    __slots__ = ("pen", "num", "length", "name", "type")

    def __init__(self, pen: int, num: int, length: int, name: str | None = None):
        self.pen, self.num, self.length = pen, num, length
        if name:  # a v9 scope field: not an IANA IE, an unsigned integer
            self.name, self.type = name, "unsigned"
            return
        try:
            elem = ipfix.ie.for_spec("(%d/%d)" % (pen, num))
            self.name, self.type = elem.name, elem.type.roottype.name
        except (ValueError, KeyError):
            self.name, self.type = "_ipfix_%d_%d" % (pen, num), "octetArray"


class Template:
    """A (options) template as received; `pkg` is the ipfix-package template
    used for fast decoding when the package can handle this layout."""

    def __init__(self, tid: int, fields: list[Field], scope_count: int = 0):
        self.tid, self.fields, self.scope_count = tid, fields, scope_count
        self.varlen = any(f.length == VARLEN for f in fields)
        self.min_length = sum(1 if f.length == VARLEN else f.length for f in fields)
        self.pkg = None
        if not self.varlen and not any(f.type == "unsigned" for f in fields):
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
        """Decode one record at offset; return (dict, next offset)."""
        if self.pkg is not None:
            vals, end = self.pkg.decode_from(buf, offset)
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
            rec[f.name] = _from_raw(f.type, raw)
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
    if typ == "string":
        return raw.decode("utf-8", "replace")
    return raw.hex()


def _from_pkg(f: Field, v):
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
    return v


class MessageDecoder:
    """Stateful decoder of export messages from any number of exporters."""

    def __init__(self):
        self.counters: Counter = Counter()
        self.templates: dict[tuple, Template] = {}
        self.gaps: dict[tuple, dict] = {}       # (proto, exporter, domain) -> stats
        self._next_seq: dict[tuple, int] = {}
        self._init_ms: dict[tuple, int] = {}     # systemInitTimeMilliseconds
        self._warned: Counter = Counter()

    # -- entry point -------------------------------------------------------
    def decode(self, data: bytes, exporter) -> list[dict]:
        """Decode one message (a datagram or one framed stream message)."""
        self.counters["messages"] += 1
        if len(data) < 4:
            return self._malformed(exporter, "short_message", len(data))
        version = int.from_bytes(data[:2], "big")
        try:
            if version == IPFIX_VERSION:
                out = self._ipfix(memoryview(data), exporter)
            elif version == V9_VERSION:
                out = self._v9(memoryview(data), exporter)
            elif version == V5_VERSION:
                out = self._v5(data, exporter)
            else:
                self.counters["unknown_version"] += 1
                self._warn("unknown_version", exporter, version=version)
                return []
        except (DecodeError, struct.error, IndexError, ValueError) as exc:
            return self._malformed(exporter, "malformed_message", str(exc))
        self.counters["flows"] += sum(1 for r in out if "_options" not in r)
        return out

    def summary(self) -> dict:
        """Counters plus the per-(exporter, domain) sequence gap table."""
        out = dict(sorted(self.counters.items()))
        out["sequence"] = [
            {"protocol": k[0], "exporter": _fmt_exporter(k[1]), "domain": k[2], **v}
            for k, v in sorted(self.gaps.items(), key=lambda kv: repr(kv[0]))]
        return out

    # -- IPFIX (RFC 7011) --------------------------------------------------
    def _ipfix(self, buf: memoryview, exporter) -> list[dict]:
        _, length, export_s, seq, odid = _IPFIX_HDR.unpack_from(buf, 0)
        if length > len(buf) or length < _IPFIX_HDR.size:
            raise DecodeError("IPFIX length %d, datagram %d" % (length, len(buf)))
        self.counters["ipfix_messages"] += 1
        ctx = {"exporter": exporter, "domain": odid, "export_ms": export_s * 1000}
        out, data_records, resync = [], 0, False
        for setid, body, end in self._sets(buf, _IPFIX_HDR.size, length, exporter):
            if setid in (2, 3):
                self._ipfix_templates(buf, body, end, setid, exporter, odid)
            elif setid >= 256:
                recs = self._data_set(buf, body, end, setid, ctx, "ipfix")
                if recs is None:
                    resync = True  # unknown record count: cannot predict seq
                else:
                    data_records += len(recs)
                    out.extend(recs)
            else:
                self._unknown_set(exporter, setid)
        self._check_seq("ipfix", exporter, odid, seq, data_records, resync)
        return out

    def _ipfix_templates(self, buf, off, end, setid, exporter, odid):
        hdr = 4 if setid == 2 else 6
        while off + hdr <= end:
            tid, count = struct.unpack_from("!HH", buf, off)
            scope = struct.unpack_from("!H", buf, off + 4)[0] if setid == 3 and count else 0
            off += hdr
            if tid < 256 and tid != setid:
                break  # padding (RFC 7011 s3.3.1)
            if count == 0:  # withdrawal (RFC 7011 s8.1); tid == setid: all
                self._withdraw(exporter, odid, tid, setid)
                continue
            if tid < 256 or scope > count:
                raise DecodeError("bad template %d (scope %d > %d)" % (tid, scope, count))
            fields = []
            for _ in range(count):
                num, flen = struct.unpack_from("!HH", buf, off)
                off += 4
                pen = 0
                if num & 0x8000:
                    num &= 0x7FFF
                    pen = struct.unpack_from("!I", buf, off)[0]
                    off += 4
                fields.append(Field(pen, num, flen))
            if off > end:
                raise DecodeError("template %d runs past its set" % tid)
            self._store(("ipfix", exporter, odid, tid), Template(tid, fields, scope))

    def _withdraw(self, exporter, odid, tid, setid):
        if tid == setid:
            doomed = [k for k, t in self.templates.items()
                      if k[:3] == ("ipfix", exporter, odid)
                      and bool(t.scope_count) == (setid == 3)]
        else:
            doomed = [("ipfix", exporter, odid, tid)]
        for key in doomed:
            if self.templates.pop(key, None) is not None:
                self.counters["templates_withdrawn"] += 1
            else:
                self.counters["template_withdrawals_unknown"] += 1

    # -- NetFlow v9 (RFC 3954) ---------------------------------------------
    def _v9(self, buf: memoryview, exporter) -> list[dict]:
        _, _, uptime, secs, seq, source = _V9_HDR.unpack_from(buf, 0)
        self.counters["v9_messages"] += 1
        ctx = {"exporter": exporter, "domain": source, "export_ms": secs * 1000,
               "uptime_ms": uptime}
        out = []
        for setid, body, end in self._sets(buf, _V9_HDR.size, len(buf), exporter):
            if setid == 0:
                self._v9_templates(buf, body, end, exporter, source)
            elif setid == 1:
                self._v9_options_templates(buf, body, end, exporter, source)
            elif setid >= 256:
                out.extend(self._data_set(buf, body, end, setid, ctx, "v9") or ())
            else:
                self._unknown_set(exporter, setid)
        self._check_seq("v9", exporter, source, seq, 1, False)  # counts packets
        return out

    def _v9_templates(self, buf, off, end, exporter, source):
        while off + 4 <= end:
            tid, count = struct.unpack_from("!HH", buf, off)
            off += 4
            if tid < 256 or off + 4 * count > end:
                if tid == 0 and count == 0:
                    break  # padding
                raise DecodeError("bad v9 template %d" % tid)
            fields = [Field(0, *struct.unpack_from("!HH", buf, off + 4 * i))
                      for i in range(count)]
            off += 4 * count
            self._store(("v9", exporter, source, tid), Template(tid, fields))

    def _v9_options_templates(self, buf, off, end, exporter, source):
        while off + 6 <= end:
            tid, scope_len, opt_len = struct.unpack_from("!HHH", buf, off)
            off += 6
            if tid < 256 or off + scope_len + opt_len > end:
                break  # rest is padding (RFC 3954 s6.1)
            fields = []
            for i in range(0, scope_len, 4):
                ftype, flen = struct.unpack_from("!HH", buf, off + i)
                fields.append(Field(0, 0xFFFF, flen, V9_SCOPE_NAMES.get(
                    ftype, "v9Scope%d" % ftype)))
            off += scope_len
            for i in range(0, opt_len, 4):
                fields.append(Field(0, *struct.unpack_from("!HH", buf, off + i)))
            off += opt_len
            self._store(("v9", exporter, source, tid),
                        Template(tid, fields, scope_count=scope_len // 4))

    # -- NetFlow v5 (Cisco) --------------------------------------------------
    def _v5(self, data: bytes, exporter) -> list[dict]:
        (_, count, uptime, secs, nsecs, seq, etype, eid,
         _sampling) = _V5_HDR.unpack_from(data, 0)
        if len(data) < _V5_HDR.size + count * _V5_REC.size or count > 30:
            raise DecodeError("v5 count %d, datagram %d" % (count, len(data)))
        self.counters["v5_messages"] += 1
        boot_ms = secs * 1000 + nsecs // 1_000_000 - uptime
        out = []
        for i in range(count):
            vals = _V5_REC.unpack_from(data, _V5_HDR.size + i * _V5_REC.size)
            rec = dict(zip(_V5_NAMES, vals))
            for k in ("sourceIPv4Address", "destinationIPv4Address",
                      "ipNextHopIPv4Address"):
                rec[k] = str(ipaddress.IPv4Address(rec[k]))
            export_ms = boot_ms + uptime
            rec["flowStartMilliseconds"] = export_ms - _uptime_age(uptime, rec.pop("_first"))
            rec["flowEndMilliseconds"] = export_ms - _uptime_age(uptime, rec.pop("_last"))
            if rec["protocolIdentifier"] == 1:  # v5 carries ICMP type/code in dst port
                rec["icmpTypeCodeIPv4"] = rec["destinationTransportPort"]
            rec["ipVersion"] = 4
            out.append(rec)
        self._check_seq("v5", exporter, (etype << 8) | eid, seq, count, False)
        return out

    # -- shared --------------------------------------------------------------
    def _sets(self, buf, off, end, exporter):
        """Yield (set id, body offset, set end); stop at a bad set length."""
        while off + 4 <= end:
            setid, slen = _SET_HDR.unpack_from(buf, off)
            if slen < 4 or off + slen > end:
                self.counters["malformed_sets"] += 1
                self._warn("malformed_set", exporter, set_id=setid, set_length=slen)
                return
            self.counters["sets"] += 1
            yield setid, off + 4, off + slen
            off += slen

    def _data_set(self, buf, off, end, setid, ctx, proto):
        """Decode a data set; None when its template is unknown (dropped)."""
        exporter, domain = ctx["exporter"], ctx["domain"]
        tmpl = self.templates.get((proto, exporter, domain, setid))
        if tmpl is None:
            # RFC 7011 s8 lets a collector buffer such sets; we drop and count.
            self.counters["data_sets_unknown_template"] += 1
            self.counters["data_bytes_unknown_template"] += end - off
            self._warn("unknown_template", exporter, protocol=proto,
                       domain=domain, template_id=setid)
            return None
        out = []
        while off + max(tmpl.min_length, 1) <= end:
            rec, nxt = tmpl.decode(buf, off)
            if nxt > end or nxt <= off:
                raise DecodeError("record of template %d past its set" % setid)
            off = nxt
            if tmpl.scope_count:
                out.append(self._options(rec, tmpl, proto, exporter, domain))
            else:
                out.append(self._flow(rec, ctx, proto))
        return out

    def _options(self, rec, tmpl, proto, exporter, domain):
        self.counters["options_records"] += 1
        if "systemInitTimeMilliseconds" in rec:
            self._init_ms[(proto, exporter, domain)] = rec["systemInitTimeMilliseconds"]
        rec["_options"] = True
        rec["_scope"] = [f.name for f in tmpl.fields[:tmpl.scope_count]]
        return rec

    def _flow(self, rec, ctx, proto):
        """Bring v9/IPFIX times to epoch ms, add ipVersion when absent."""
        for edge in ("Start", "End"):
            ms_key = "flow%sMilliseconds" % edge
            up = rec.pop("flow%sSysUpTime" % edge, None)
            if ms_key in rec:
                continue
            if up is not None and "uptime_ms" in ctx:  # v9: header clock
                rec[ms_key] = ctx["export_ms"] - _uptime_age(ctx["uptime_ms"], up)
            elif up is not None:  # IPFIX: relative to systemInitTimeMilliseconds
                init = rec.get("systemInitTimeMilliseconds", self._init_ms.get(
                    (proto, ctx["exporter"], ctx["domain"])))
                if init is not None:
                    rec[ms_key] = init + up
            elif "flow%sSeconds" % edge in rec:
                rec[ms_key] = rec["flow%sSeconds" % edge] * 1000
            elif "flow%sMicroseconds" % edge in rec:
                rec[ms_key] = rec["flow%sMicroseconds" % edge] // 1000
            elif "flow%sNanoseconds" % edge in rec:
                rec[ms_key] = rec["flow%sNanoseconds" % edge] // 1_000_000
            elif "flow%sDeltaMicroseconds" % edge in rec:
                rec[ms_key] = ctx["export_ms"] - rec["flow%sDeltaMicroseconds" % edge] // 1000
        if "ipVersion" not in rec:
            if "sourceIPv4Address" in rec:
                rec["ipVersion"] = 4
            elif "sourceIPv6Address" in rec:
                rec["ipVersion"] = 6
        return rec

    def _store(self, key, tmpl):
        if tmpl.min_length == 0:
            raise DecodeError("template %d has zero-length records" % tmpl.tid)
        if key not in self.templates:
            self.counters["templates_learned"] += 1
        self.templates[key] = tmpl
        self.counters["template_records"] += 1

    def _unknown_set(self, exporter, setid):
        self.counters["unknown_sets"] += 1
        self._warn("unknown_set", exporter, set_id=setid)

    def _check_seq(self, proto, exporter, domain, seq, advance, resync):
        """Compare with the expected sequence number, then advance it.
        v5 counts flows, v9 export packets, IPFIX data records."""
        key = (proto, exporter, domain)
        stats = self.gaps.setdefault(key, {"messages": 0, "gaps": 0,
                                           "missing": 0, "out_of_order": 0})
        stats["messages"] += 1
        expected = self._next_seq.get(key)
        self._next_seq[key] = None if resync else (seq + advance) & _U32
        if expected is None or seq == expected:
            return
        ahead = (seq - expected) & _U32
        if ahead < 0x80000000:
            stats["gaps"] += 1
            stats["missing"] += ahead
            self.counters["sequence_gaps"] += 1
            self.counters["sequence_missing"] += ahead
            self._warn("sequence_gap", exporter, protocol=proto, domain=domain,
                       expected=expected, received=seq, missing=ahead)
        else:
            stats["out_of_order"] += 1
            self.counters["sequence_out_of_order"] += 1
            self._warn("sequence_out_of_order", exporter, protocol=proto,
                       domain=domain, expected=expected, received=seq)

    def _malformed(self, exporter, what, detail):
        self.counters["malformed_messages"] += 1
        self._warn(what, exporter, detail=detail)
        return []

    def _warn(self, event, exporter, **kw):
        """Rate-limited warning: the 1st, 2nd, 4th, 8th... of each kind
        per exporter, with the running count."""
        key = (event, exporter)
        self._warned[key] += 1
        n = self._warned[key]
        if n & (n - 1) == 0:
            log.warning(event, exporter=_fmt_exporter(exporter), occurrences=n, **kw)


def _uptime_age(uptime: int, stamp: int) -> int:
    """How many ms before the header's sysUptime a first/last switched stamp
    lies: a signed 32-bit difference, so a stamp from before a 32-bit uptime
    wrap is in the past and a stamp a little after the header clock (an
    exporter whose header clock is truncated to whole seconds) is not
    mistaken for one 49.7 days old."""
    return ((uptime - stamp + 0x80000000) & _U32) - 0x80000000


def _fmt_exporter(exporter) -> str:
    if isinstance(exporter, tuple):
        return ":".join(str(p) for p in exporter)
    return str(exporter)
