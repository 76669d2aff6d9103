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


class RecordEncoder:
    """Encodes record arrays into complete messages of at most `mtu` bytes.

    Subclasses set `header_len`, the layout, and implement `_frame` (write
    the header into self._buf[0:header_len]) plus template/options messages.
    """
    header_len = 0
    name = "?"
    # the sampling-rate options template, set when sampling 1:N (N > 1)
    sampling_rate_tmpl = None

    def __init__(self, cfg: EncoderConfig):
        if cfg.mtu < MIN_MTU or cfg.mtu > MAX_MTU:
            raise EncodeError(f"mtu {cfg.mtu} out of range {MIN_MTU}..{MAX_MTU}")
        self.cfg = cfg
        self.clock = PacketClock(cfg.boot_margin_ms)
        self._buf = bytearray(cfg.mtu)
        self._cbuf = ffi.from_buffer(self._buf)
        self._view = memoryview(self._buf)      # one copy per message, not two
        self._res = ffi.new("struct enc_result *")
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

    def encode(self, address: int, n: int):
        """Yield (message bytes, data records in it) for records[0..n)."""
        clock = self.clock
        clock.observe(address, n)
        self._lay.boot_ms = clock.boot_ms or 0
        size = RECORD_SIZE
        hl = self.header_len
        cap = self.cfg.mtu - hl
        res = self._res
        lay, out, view = self._lay, self._cbuf + hl, self._view
        encode, frame = lib.enc_encode, self._frame
        done = 0
        while done < n:
            rc = encode(lay, address + done * size, n - done, out, cap, res)
            if rc != 0:
                raise EncodeError(f"enc_encode failed: {rc}")
            done += res.consumed
            encoded = res.encoded
            if res.skipped:
                self.records_not_exportable += res.skipped
            if res.clamped:
                self.records_clamped += res.clamped
            if encoded:
                self.records_encoded += encoded
                total = hl + res.bytes
                frame(total, encoded, res.sets)
                yield bytes(view[:total]), encoded
            elif res.consumed == 0:
                raise EncodeError("record larger than the message buffer")

    # -- subclasses ---------------------------------------------------------
    def _frame(self, total: int, nrecords: int, nsets: int) -> None:
        raise NotImplementedError

    def template_message(self):
        """Template (and options template) message, or None (NetFlow v5)."""
        return None

    def options_message(self, stats: dict):
        """Options data message (sampling + statistics), or None."""
        return None
