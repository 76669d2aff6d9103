"""What every encoder shares: the C encoder binding, the message buffer and
the packet-time clock.

Clock: times are packet times. `now_ms` is the engine clock (the largest
record end time seen so far, or a later time the caller gives); `boot_ms` is a
virtual boot time for NetFlow's sysUptime, set from the first records seen
minus a margin, and only ever moved earlier (an older record re-bases it: the
collector recomputes boot time from every header, so the change is exact).
"""
from __future__ import annotations

from dataclasses import dataclass

from flowprobe.exporters._encode import ffi, lib

# sysUptime starts this long before the first record's first packet, so flows
# that began before it (exported later) still get a positive uptime.
DEFAULT_BOOT_MARGIN_MS = 3_600_000
RECORD_SIZE = ffi.sizeof("struct ft_record")
# The template message (both flow templates and both options templates) must
# fit one message; 65535 is the IPFIX message length limit.
MIN_MTU = 512
MAX_MTU = 65535


@dataclass
class EncoderConfig:
    mtu: int = 1400                 # max message size (IP/UDP payload)
    domain_id: int = 0              # IPFIX observation domain / v9 source id
    engine_type: int = 0            # NetFlow v5 header
    engine_id: int = 0
    sampling_interval: int = 1      # 1: every packet
    sampling_mode: str = "deterministic"    # or "random" (options.py)
    exporting_process_id: int = 0
    boot_margin_ms: int = DEFAULT_BOOT_MARGIN_MS
    application: bool = False       # flow templates carry the application (flow.dpi)


class EncodeError(RuntimeError):
    pass


class PacketClock:
    """Engine time for message headers, driven by the records themselves."""

    def __init__(self, boot_margin_ms: int):
        self.margin = boot_margin_ms
        self.now_ms = 0
        self.boot_ms: int | None = None
        self._lo = ffi.new("uint64_t *")
        self._hi = ffi.new("uint64_t *")

    def observe(self, address: int, n: int) -> None:
        if n == 0:
            return
        lib.enc_time_span(address, n, self._lo, self._hi)
        lo, hi = self._lo[0], self._hi[0]
        if hi > self.now_ms:
            self.now_ms = hi
        if self.boot_ms is None or lo < self.boot_ms:
            self.boot_ms = max(0, lo - self.margin)

    def advance(self, now_ms: int) -> None:
        if now_ms > self.now_ms:
            self.now_ms = now_ms
        if self.boot_ms is None:
            self.boot_ms = max(0, self.now_ms - self.margin)

    def uptime_ms(self, now_ms: int) -> int:
        if self.boot_ms is None:
            return 0
        return (now_ms - self.boot_ms) & 0xFFFFFFFF


class MessageBlock:
    """Whole messages back to back: message i is ``lens[i]`` bytes of
    ``data`` (after the ones before it) and carries ``nrecs[i]`` data
    records; ``records`` is their sum. The unit an encoder hands to a
    transport, so that Python works per block of up to
    MAX_BLOCK_MESSAGES messages, not per message."""
    __slots__ = ("data", "lens", "nrecs", "records", "templates", "since")

    def __init__(self, data: bytes, lens: list, nrecs: list, records: int,
                 templates: int = 0, since: int | None = None):
        self.data, self.lens, self.nrecs, self.records = data, lens, nrecs, records
        # template messages among them (the count refresh), and the data
        # messages after the last one (None: the encoder does no refresh)
        self.templates, self.since = templates, since

    @classmethod
    def of(cls, message: bytes, nrecords: int) -> "MessageBlock":
        return cls(message, [len(message)], [nrecords], nrecords)

    def messages(self):
        """(message bytes, data records in it), one by one."""
        data, off = self.data, 0
        for length, n in zip(self.lens, self.nrecs):
            yield data[off:off + length], n
            off += length


# Messages per enc_encode_msgs() call: one sendmmsg() batch (udpsend.c).
MAX_BLOCK_MESSAGES = 64


class RecordEncoder:
    """Encodes record arrays into complete messages of at most `mtu` bytes.

    The C encoder writes whole messages, header included
    (enc_encode_msgs); subclasses set `header_len`, the layout, the name of
    their sequence counter (`seq_attr`) and `_header_fields` (the header
    fields that stay the same for one batch), plus template/options
    messages, which are built here in Python.
    """
    header_len = 0
    name = "?"
    seq_attr = "sequence"
    # the sampling-rate options template, set when sampling 1:N (N > 1)
    sampling_rate_tmpl = None

    def __init__(self, cfg: EncoderConfig):
        if cfg.mtu < MIN_MTU or cfg.mtu > MAX_MTU:
            raise EncodeError(f"mtu {cfg.mtu} out of range {MIN_MTU}..{MAX_MTU}")
        self.cfg = cfg
        self.clock = PacketClock(cfg.boot_margin_ms)
        self._buf = ffi.new("uint8_t[]", cfg.mtu * MAX_BLOCK_MESSAGES)
        self._lens = ffi.new("uint32_t[]", MAX_BLOCK_MESSAGES)
        self._nrecs = ffi.new("uint32_t[]", MAX_BLOCK_MESSAGES)
        self._hdr = ffi.new("struct enc_header *")
        self._res = ffi.new("struct enc_result *")
        self._refresh = ffi.new("struct enc_refresh *")
        self._refresh_body = None       # keeps the template sets alive for C
        self._lay = ffi.new("struct enc_layout *")
        self._keep = []
        self.records_encoded = 0
        self.records_not_exportable = 0
        self.records_clamped = 0

    def _set_layout(self, f4, f6, set_id4, set_id6, set_hdr, align, max_records=0):
        self._keep = [f4, f6]
        lay = self._lay
        if f4 is not None:
            lay.fields4, lay.nfields4 = f4, len(f4)
        if f6 is not None:
            lay.fields6, lay.nfields6 = f6, len(f6)
        lay.set_id4, lay.set_id6 = set_id4, set_id6
        lay.set_hdr, lay.set_align = set_hdr, align
        lay.max_records = max_records

    def encode_blocks(self, address: int, n: int, limit=None, refresh=None):
        """Yield MessageBlocks for records[0..n). ``limit()``, asked before
        each block, caps its messages (a time-triggered refresh falls
        between two blocks); the sequence counter is read before and
        stored after each block, so messages built in between (templates,
        options) take their place in the sequence. ``refresh`` (the
        exporter's TemplatePolicy), read before each block: a template
        message follows every ``refresh.every_messages`` data messages,
        counted on from ``refresh.since``, inside the blocks
        (block.templates, block.since)."""
        clock = self.clock
        clock.observe(address, n)
        self._lay.boot_ms = clock.boot_ms or 0
        hdr, res, lay, rf = self._hdr, self._res, self._lay, self._refresh
        self._header_fields(hdr)
        parts = self.template_parts() if refresh is not None else None
        if parts is not None:
            if self._refresh_body is not parts[0]:
                self._refresh_body = parts[0]
                rf.body, rf.body_len = ffi.from_buffer(parts[0]), len(parts[0])
            rf.count = parts[1]
        else:
            rf.body, rf.body_len = ffi.NULL, 0
            self._refresh_body = None
        buf, lens, nrecs, mtu = self._buf, self._lens, self._nrecs, self.cfg.mtu
        encode, size, seq = lib.enc_encode_msgs, RECORD_SIZE, self.seq_attr
        done = 0
        while done < n:
            k = MAX_BLOCK_MESSAGES if limit is None else \
                max(1, min(MAX_BLOCK_MESSAGES, limit()))
            hdr.sequence = getattr(self, seq)
            if refresh is not None:
                rf.every, rf.since = refresh.every_messages, refresh.since
            rc = encode(lay, hdr, address + done * size, n - done, buf, mtu, k,
                        lens, nrecs, rf, res)
            if rc != 0:
                raise EncodeError(f"enc_encode_msgs failed: {rc}")
            setattr(self, seq, hdr.sequence)
            done += res.consumed
            if res.skipped:
                self.records_not_exportable += res.skipped
            if res.clamped:
                self.records_clamped += res.clamped
            m = res.messages
            if m:
                self.records_encoded += res.encoded
                yield MessageBlock(ffi.buffer(buf, res.bytes)[:], ffi.unpack(lens, m),
                                   ffi.unpack(nrecs, m), res.encoded, rf.sent, rf.since)
            elif res.consumed == 0:
                raise EncodeError("record larger than the message buffer")

    def encode(self, address: int, n: int):
        """Yield (message bytes, data records in it) for records[0..n)."""
        for block in self.encode_blocks(address, n):
            yield from block.messages()

    # -- subclasses ---------------------------------------------------------
    def _header_fields(self, hdr) -> None:
        """Fill `struct enc_header` but for the sequence (from the clock)."""
        raise NotImplementedError

    def template_parts(self):
        """(template and options template sets, their v9 record count), or
        None (NetFlow v5): what a template message carries after its header."""
        return None

    def template_message(self):
        """Template (and options template) message, or None (NetFlow v5)."""
        return None

    def options_message(self, stats: dict):
        """Options data message (sampling + statistics), or None."""
        return None
