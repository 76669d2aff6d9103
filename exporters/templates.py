"""Template definitions for the exporters, built from the IANA IPFIX registry.

IE numbers, types and default lengths come from the `ipfix` package's copy of
the IANA registry; this module only lists *which* IEs a template carries, in
which order, which ft_record field feeds each, and where the wire length is
deliberately reduced. One `Template` drives both the template record bytes
and the C encoder's data-record layout (`Template.fields_cdata`).

VLANs: the outer tag goes out as `vlanId` (58), which nfdump shows as the
source VLAN and tshark names "VLAN Id"; the inner QinQ tag as
`dot1qCustomerVlanId` (245), the IANA element for the C-TAG of RFC 7133.
`postVlanId` (59) would claim an egress rewrite, which a passive probe never
observes, so it is not used; collectors that do not know 245 skip it.

Application (nDPI), only when the flow engine labels flows (flow.dpi): see
`_application_fields` for the elements, their lengths and why.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import ipfix.ie

ipfix.ie.use_iana_default()

# Template ids (>= 256 per RFC 7011 / RFC 3954).
TID_FLOW4 = 256
TID_FLOW6 = 257
TID_SAMPLING = 258
TID_STATS = 259
TID_SAMPLING_RATE = 260     # the sampling rate in the layout nfdump/nfacctd read

# NetFlow v9 scope field type "System" (RFC 3954 section 6.1).
V9_SCOPE_SYSTEM = 1

# ntop's enterprise elements (nProbe, ntopng include/ntop_flow.h): PEN 35632
# in IPFIX; in NetFlow v9, which has no enterprise numbers, the same element
# is field type NTOP_BASE_ID + its id (L7_PROTO: 57472 + 118 = 57590).
NTOP_PEN = 35632
NTOP_BASE_ID = 57472
NTOP_L7_PROTO = 118
# applicationName's fixed length (NetFlow v9): the longest label struct
# ft_record holds (app_name[47] less its NUL; encode.c checks it), so
# nothing is truncated. IPFIX sends it variable-length (VARLEN).
APP_NAME_LEN = 46
VARLEN = 65535              # RFC 7011 section 7; encode.h ENC_VARLEN


def ie(name: str):
    """The registry entry of an IANA IE (raises KeyError if unknown)."""
    return ipfix.ie.for_spec(name)


@dataclass(frozen=True)
class Field:
    name: str          # IANA IE name (or ntop's element name)
    num: int           # IE id / v9 field type (enterprise elements: the id in the PEN)
    length: int        # bytes on the wire
    source: str        # enc_field_id suffix, e.g. "SRC_ADDR4"
    pen: int = 0       # IPFIX private enterprise number (0: IANA)

    @property
    def v9_type(self) -> int:
        """The NetFlow v9 field type: the IE id, or ntop's v9 id."""
        if self.pen == NTOP_PEN:
            return NTOP_BASE_ID + self.num
        if self.pen:
            raise ValueError(f"{self.name}: no NetFlow v9 type for PEN {self.pen}")
        return self.num

    def ipfix_spec(self) -> bytes:
        """The field specifier of RFC 7011 section 3.2."""
        if self.pen:
            return struct.pack("!HHI", 0x8000 | self.num, self.length, self.pen)
        return struct.pack("!HH", self.num, self.length)


def field(name: str, source: str, length: int | None = None) -> Field:
    """An IANA IE. A variable-length one (a string) needs an explicit
    `length`: a fixed one, or VARLEN (IPFIX only; the encoder takes it for
    the application label alone)."""
    e = ie(name)
    if e.length == VARLEN:
        if length is None:
            raise ValueError(f"{name}: variable-length IE needs a length (or VARLEN)")
        return Field(name, e.num, length, source)
    n = e.length if length is None else length
    if n > e.length:
        raise ValueError(f"{name}: length {n} exceeds the type's {e.length}")
    return Field(name, e.num, n, source)


@dataclass(frozen=True)
class Template:
    """An ordered IE list with its template id; scope_count > 0: options."""
    template_id: int
    fields: tuple
    scope_count: int = 0

    @property
    def record_length(self) -> int:
        """Bytes a record takes; with variable-length fields, the least
        (each such field its length byte alone)."""
        return sum(1 if f.length == VARLEN else f.length for f in self.fields)

    @property
    def variable_length(self) -> bool:
        return any(f.length == VARLEN for f in self.fields)

    def ipfix_record(self) -> bytes:
        """The (options) template record of RFC 7011 section 3.4."""
        if self.scope_count:
            head = struct.pack("!HHH", self.template_id, len(self.fields), self.scope_count)
        else:
            head = struct.pack("!HH", self.template_id, len(self.fields))
        return head + b"".join(f.ipfix_spec() for f in self.fields)

    def v9_record(self) -> bytes:
        """The (options) template record of RFC 3954 sections 5.2 and 6.1.

        v9 options scopes are typed by scope field type, not IE: the first
        scope_count fields are sent as scope "System" (1) with their length.
        """
        if not self.scope_count:
            return struct.pack("!HH", self.template_id, len(self.fields)) + b"".join(
                struct.pack("!HH", f.v9_type, f.length) for f in self.fields)
        scopes = self.fields[: self.scope_count]
        opts = self.fields[self.scope_count:]
        return (struct.pack("!HHH", self.template_id, 4 * len(scopes), 4 * len(opts))
                + b"".join(struct.pack("!HH", V9_SCOPE_SYSTEM, f.length) for f in scopes)
                + b"".join(struct.pack("!HH", f.v9_type, f.length) for f in opts))

    def fields_cdata(self, ffi, lib):
        """A `struct enc_field[]` for the C encoder (keep it referenced)."""
        arr = ffi.new("struct enc_field[]", len(self.fields))
        for i, f in enumerate(self.fields):
            arr[i].field = getattr(lib, "ENC_F_" + f.source)
            arr[i].length = f.length
        return arr


def _flow_fields(v6: bool, ipfix_times: bool, narrow: bool) -> tuple:
    """Flow record fields. narrow: NetFlow v9 sizes (RFC 3954 defaults where
    they are shorter than IPFIX's: 1-byte tcp flags)."""
    a = "6" if v6 else "4"
    out = [
        field(f"sourceIPv{a}Address", f"SRC_ADDR{a}"),
        field(f"destinationIPv{a}Address", f"DST_ADDR{a}"),
        # before the ports: nfdump stores icmpTypeCode* into its dst port
        # slot, so a later 0 (non-ICMP) would erase e.g. an SCTP port.
        # NetFlow v9 has one ICMP_TYPE (32, type*256+code) for both versions
        # (RFC 3954); nfdump's v9 reader ignores 139 and zeroes the port.
        field("icmpTypeCodeIPv4" if narrow else f"icmpTypeCodeIPv{a}", "ICMP_TYPE_CODE"),
        field("sourceTransportPort", "SRC_PORT"),
        field("destinationTransportPort", "DST_PORT"),
        field("protocolIdentifier", "PROTOCOL"),
        field("ipClassOfService", "TOS"),
        field("tcpControlBits", "TCP_FLAGS", 1 if narrow else None),
        field("packetDeltaCount", "PACKETS"),
        field("octetDeltaCount", "OCTETS"),
    ]
    if ipfix_times:
        out += [field("flowStartMilliseconds", "START_MS"),
                field("flowEndMilliseconds", "END_MS")]
    else:
        out += [field("flowStartSysUpTime", "START_UPTIME"),
                field("flowEndSysUpTime", "END_UPTIME")]
    out += [
        field("ingressInterface", "IFINDEX"),
        field("egressInterface", "ZERO"),
        field("vlanId", "VLAN"),
        field("dot1qCustomerVlanId", "INNER_VLAN"),
        field("minimumTTL", "TTL_MIN"),
        field("maximumTTL", "TTL_MAX"),
        field("flowEndReason", "END_REASON"),
        field("ipVersion", "IP_VERSION"),
        field("sourceMacAddress", "SRC_MAC"),
        field("destinationMacAddress", "DST_MAC"),
    ]
    return tuple(out)


def _application_fields(ipfix: bool) -> tuple:
    """The application of a flow (nDPI), the same in IPFIX and NetFlow v9:

    - IANA applicationName (IE 96, a string; Cisco's v9 APPLICATION_NAME is
      the same type 96): nDPI's label, "TLS.Google", "DNS", "Unknown"; empty
      when the flow was not inspected. IPFIX: variable-length (RFC 7011
      section 7, one length byte: a label is at most 46 bytes), so a record
      takes 1 + the label's length (~9 bytes, where a fixed 46 would add 46
      to every record and cut a message's records by 40%). NetFlow v9 has
      no variable length: fixed APP_NAME_LEN bytes, NUL-padded. tshark
      (cflow.appl_name) shows both; nfdump and nfacctd skip the field
      cleanly.
    - ntop's L7_PROTO (PEN 35632 id 118; NetFlow v9 type 57590), 2 bytes,
      numeric, as nProbe exports it ("[NFv9 57590][IPFIX 35632.118][Len 2]
      %L7_PROTO", nProbe's template list; tshark: cflow.pie.ntop.l7_proto,
      uint16; ElastiFlow: uint16 ntop_l7_proto): nDPI's app id, the most
      specific one (126 of TLS.Google, 5 of DNS: nDPI sets the app id
      whenever it found anything, the master only beneath it). ntop defines no
      element for the master id alone (nProbe's list, tshark's and
      ElastiFlow's ntop tables have none) and a made-up id in ntop's PEN
      could collide with theirs, so the master goes out inside the label
      ("TLS.Google"); ntopng's ZMQ feed has both ids ("91.126").
    """
    return (field("applicationName", "APP_NAME", VARLEN if ipfix else APP_NAME_LEN),
            Field("L7_PROTO", NTOP_L7_PROTO, 2, "APP_ID", NTOP_PEN))


def ipfix_flow_templates(application: bool = False) -> tuple:
    """application: append the application fields (the flow engine runs DPI)."""
    app = _application_fields(True) if application else ()
    return (Template(TID_FLOW4, _flow_fields(False, True, False) + app),
            Template(TID_FLOW6, _flow_fields(True, True, False) + app))


def v9_flow_templates(application: bool = False) -> tuple:
    app = _application_fields(False) if application else ()
    return (Template(TID_FLOW4, _flow_fields(False, False, True) + app),
            Template(TID_FLOW6, _flow_fields(True, False, True) + app))


def v5_record_fields() -> tuple:
    """The fixed 48-byte NetFlow v5 record, expressed as encoder fields.

    Not a template (v5 has none) but the same encoder drives it; counters and
    interfaces are reduced to v5's 32/16 bits and saturate (counted)."""
    return tuple([
        Field("srcaddr", 0, 4, "SRC_ADDR4"),
        Field("dstaddr", 0, 4, "DST_ADDR4"),
        Field("nexthop", 0, 4, "ZERO"),
        Field("input", 0, 2, "IFINDEX"),
        Field("output", 0, 2, "ZERO"),
        Field("dPkts", 0, 4, "PACKETS"),
        Field("dOctets", 0, 4, "OCTETS"),
        Field("First", 0, 4, "START_UPTIME"),
        Field("Last", 0, 4, "END_UPTIME"),
        Field("srcport", 0, 2, "SRC_PORT"),
        Field("dstport", 0, 2, "DST_PORT"),
        Field("pad1", 0, 1, "ZERO"),
        Field("tcp_flags", 0, 1, "TCP_FLAGS"),
        Field("prot", 0, 1, "PROTOCOL"),
        Field("tos", 0, 1, "TOS"),
        Field("src_as", 0, 2, "ZERO"),
        Field("dst_as", 0, 2, "ZERO"),
        Field("src_mask", 0, 1, "ZERO"),
        Field("dst_mask", 0, 1, "ZERO"),
        Field("pad2", 0, 2, "ZERO"),
    ])


# Options templates: values are filled in Python (a few records per period),
# so `source` is unused ("ZERO").
def ipfix_sampling_template(mode: str = "deterministic") -> Template:
    """PSAMP selector report (RFC 5476): scope selectorId. Deterministic
    (systematic count-based) carries samplingPacketInterval/Space, random
    (n-out-of-N) samplingSize/Population."""
    params = (("samplingSize", "samplingPopulation") if mode == "random"
              else ("samplingPacketInterval", "samplingPacketSpace"))
    return Template(TID_SAMPLING, (
        field("selectorId", "ZERO"),
        field("selectorAlgorithm", "ZERO"),
        *(field(name, "ZERO") for name in params),
    ), scope_count=1)


def v9_sampling_template() -> Template:
    """v9 sampling options (RFC 3954 types 34/35), scope System."""
    return Template(TID_SAMPLING, (
        field("exportingProcessId", "ZERO"),
        field("samplingInterval", "ZERO"),
        field("samplingAlgorithm", "ZERO"),
    ), scope_count=1)


def ipfix_sampling_rate_template(mode: str = "deterministic") -> Template:
    """The sampling rate in a layout that nfdump 1.7.1 and pmacct 1.7.7 read,
    sent beside the RFC 5476 report (which nfdump ignores: it takes an IPFIX
    sampling options template only without selectorAlgorithm, and neither
    collector reads samplingSize/Population). Scope selectorId (the same
    selector as the report). Deterministic: samplingPacketInterval/Space,
    i.e. the report without selectorAlgorithm; random: samplingInterval
    (34, 1 in N; deprecated by IANA, but the only rate both collectors read
    that does not claim systematic sampling)."""
    params = (("samplingInterval",) if mode == "random"
              else ("samplingPacketInterval", "samplingPacketSpace"))
    return Template(TID_SAMPLING_RATE, (
        field("selectorId", "ZERO"),
        *(field(name, "ZERO") for name in params),
    ), scope_count=1)


def v9_sampling_rate_template() -> Template:
    """v9 SAMPLING_INTERVAL (34) alone, scope System: nfdump 1.7.1 takes a
    v9 sampling options template only when it has 34 without 35."""
    return Template(TID_SAMPLING_RATE, (
        field("exportingProcessId", "ZERO"),
        field("samplingInterval", "ZERO"),
    ), scope_count=1)


def stats_template() -> Template:
    """Exporting/metering process statistics (RFC 7011 sections 4.1-4.3)
    scoped by exportingProcessId; v9 sends the same fields, scope System."""
    return Template(TID_STATS, (
        field("exportingProcessId", "ZERO"),
        field("exportedMessageTotalCount", "ZERO"),
        field("exportedOctetTotalCount", "ZERO"),
        field("exportedFlowRecordTotalCount", "ZERO"),
        field("ignoredPacketTotalCount", "ZERO"),
        field("notSentFlowTotalCount", "ZERO"),
    ), scope_count=1)
