"""Decode NetFlow v5, NetFlow v9 and IPFIX messages into IANA-named dicts.

One `MessageDecoder` serves every exporter a collector hears from. It frames
IPFIX and v9 messages into sets, keeps the templates they announce per
(exporter, domain, template id) and the sequence state per (exporter,
domain), and counts every outcome in `counters`. Records are decoded by the
received templates of records.py; v5 (no templates) by netflow5.py.

Who decodes what:
  - IPFIX information elements (names, ids, types) come from the `ipfix`
    package's IANA registry, for v9 too: v9 field types 1..127 are the same
    numbers as the IANA IEs (RFC 3954 became RFC 5102).
  - IPFIX data records of fixed-length templates are decoded by the package's
    `Template.decode_from` (one struct unpack per record; records.py).
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

import struct
from collections import Counter

import structlog

from .cache import TemplateCache
from .netflow5 import V5_VERSION, decode_v5
from .records import DecodeError, ReceivedField, ReceivedTemplate, uptime_age

log = structlog.get_logger("flowprobe.collector")

IPFIX_VERSION = 10
V9_VERSION = 9

_IPFIX_HDR = struct.Struct("!HHIII")      # version length export_time seq odid
_V9_HDR = struct.Struct("!HHIIII")        # version count uptime secs seq source
_SET_HDR = struct.Struct("!HH")
_U32 = 0xFFFFFFFF
# Per-(exporter, domain) sequence states and warning keys: bounded too, as a
# flood of random domains or spoofed source ports would grow them for ever.
MAX_SEQUENCE_STATES = 16384
_MAX_WARNED = 65536

# v9 options scope field types (RFC 3954 section 6.1): not IANA IEs.
V9_SCOPE_NAMES = {1: "v9ScopeSystem", 2: "v9ScopeInterface",
                  3: "v9ScopeLineCard", 4: "v9ScopeCache", 5: "v9ScopeTemplate"}


class MessageDecoder:
    """Stateful decoder of export messages from any number of exporters."""

    def __init__(self, **cache_limits):
        """cache_limits: TemplateCache's max_templates, max_per_domain,
        max_fields (see cache.py for what each bounds)."""
        self.counters: Counter = Counter()
        self.templates = TemplateCache(self.counters, **cache_limits)
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
        out["templates_cached"] = len(self.templates)
        out["template_fields_cached"] = self.templates.fields
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
                fields.append(ReceivedField(pen, num, flen))
            if off > end:
                raise DecodeError("template %d runs past its set" % tid)
            self._store(("ipfix", exporter, odid, tid), ReceivedTemplate(tid, fields, scope))

    def _withdraw(self, exporter, odid, tid, setid):
        if tid == setid:
            doomed = [k for k in self.templates.domain_keys(("ipfix", exporter, odid))
                      if bool(self.templates.get(k).scope_count) == (setid == 3)]
        else:
            doomed = [("ipfix", exporter, odid, tid)]
        for key in doomed:
            if self.templates.pop(key) is not None:
                self.counters["templates_withdrawn"] += 1
            else:
                self.counters["template_withdrawals_unknown"] += 1

    # -- NetFlow v9 (RFC 3954) ---------------------------------------------
    def _v9(self, buf: memoryview, exporter) -> list[dict]:
        _, count, uptime, secs, seq, source = _V9_HDR.unpack_from(buf, 0)
        self.counters["v9_messages"] += 1
        ctx = {"exporter": exporter, "domain": source, "export_ms": secs * 1000,
               "uptime_ms": uptime}
        out, records = [], 0  # records: the header's count (RFC 3954 s5.1)
        for setid, body, end in self._sets(buf, _V9_HDR.size, len(buf), exporter):
            if setid == 0:
                records += self._v9_templates(buf, body, end, exporter, source)
            elif setid == 1:
                records += self._v9_options_templates(buf, body, end, exporter, source)
            elif setid >= 256:
                recs = self._data_set(buf, body, end, setid, ctx, "v9")
                if recs is None:
                    records = None  # unknown template: its records are uncountable
                elif records is not None:
                    records += len(recs)
                out.extend(recs or ())
            else:
                self._unknown_set(exporter, setid)
        if records is not None and records != count:
            self.counters["v9_count_mismatch"] += 1
            self._warn("v9_count_mismatch", exporter, domain=source,
                       header_count=count, records=records)
        self._check_seq("v9", exporter, source, seq, 1, False)  # counts packets
        return out

    def _v9_templates(self, buf, off, end, exporter, source) -> int:
        """Store each template of a template flowset; return how many."""
        n = 0
        while off + 4 <= end:
            tid, count = struct.unpack_from("!HH", buf, off)
            off += 4
            if tid < 256 or off + 4 * count > end:
                if tid == 0 and count == 0:
                    break  # padding
                raise DecodeError("bad v9 template %d" % tid)
            fields = [ReceivedField(0, *struct.unpack_from("!HH", buf, off + 4 * i))
                      for i in range(count)]
            off += 4 * count
            self._store(("v9", exporter, source, tid), ReceivedTemplate(tid, fields))
            n += 1
        return n

    def _v9_options_templates(self, buf, off, end, exporter, source) -> int:
        """Store each options template of a flowset; return how many."""
        n = 0
        while off + 6 <= end:
            tid, scope_len, opt_len = struct.unpack_from("!HHH", buf, off)
            off += 6
            if tid < 256 or off + scope_len + opt_len > end:
                break  # rest is padding (RFC 3954 s6.1)
            fields = []
            for i in range(0, scope_len, 4):
                ftype, flen = struct.unpack_from("!HH", buf, off + i)
                fields.append(ReceivedField(0, 0xFFFF, flen, V9_SCOPE_NAMES.get(
                    ftype, "v9Scope%d" % ftype)))
            off += scope_len
            for i in range(0, opt_len, 4):
                fields.append(ReceivedField(0, *struct.unpack_from("!HH", buf, off + i)))
            off += opt_len
            self._store(("v9", exporter, source, tid),
                        ReceivedTemplate(tid, fields, scope_count=scope_len // 4))
            n += 1
        return n

    # -- NetFlow v5 (Cisco) --------------------------------------------------
    def _v5(self, data: bytes, exporter) -> list[dict]:
        out, seq, engine = decode_v5(data)
        self.counters["v5_messages"] += 1
        self._check_seq("v5", exporter, engine, seq, len(out), False)
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
            if "_invalid" in rec:
                self.counters["records_invalid_time"] += 1
                self._warn("record_invalid_time", exporter, protocol=proto,
                           domain=domain, template_id=setid, fields=rec["_invalid"])
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
                rec[ms_key] = ctx["export_ms"] - uptime_age(ctx["uptime_ms"], up)
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
        if self.templates.store(key, tmpl):
            self.counters["templates_learned"] += 1
        self.counters["template_records"] += 1

    def _unknown_set(self, exporter, setid):
        self.counters["unknown_sets"] += 1
        self._warn("unknown_set", exporter, set_id=setid)

    def _check_seq(self, proto, exporter, domain, seq, advance, resync):
        """Compare with the expected sequence number, then advance it.
        v5 counts flows, v9 export packets, IPFIX data records."""
        key = (proto, exporter, domain)
        stats = self.gaps.get(key)
        if stats is None:
            if len(self.gaps) >= MAX_SEQUENCE_STATES:  # oldest state out
                old = next(iter(self.gaps))
                del self.gaps[old]
                self._next_seq.pop(old, None)
                self._init_ms.pop(old, None)
                self.counters["sequence_states_evicted"] += 1
            stats = self.gaps[key] = {"messages": 0, "gaps": 0,
                                      "missing": 0, "out_of_order": 0}
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
        if key not in self._warned and len(self._warned) >= _MAX_WARNED:
            self._warned.clear()  # rate limiting starts over
        self._warned[key] += 1
        n = self._warned[key]
        if n & (n - 1) == 0:
            log.warning(event, exporter=_fmt_exporter(exporter), occurrences=n, **kw)


def _fmt_exporter(exporter) -> str:
    if isinstance(exporter, tuple):
        return ":".join(str(p) for p in exporter)
    return str(exporter)
