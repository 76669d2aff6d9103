"""NetFlow v5 encoder: 24-byte header + up to 30 fixed 48-byte records.

IPv4 only: IPv6 records are skipped and counted in records_not_exportable.
dPkts/dOctets are 32-bit: a larger delta saturates at 2**32-1 and the record
is counted in records_clamped (clamping keeps one record per flow, as
collectors expect; the engine's active timeout keeps real deltas far below).
sysUptime/unix_secs follow the packet clock (see base.PacketClock).
"""
from __future__ import annotations

import struct

from flowprobe.exporters import templates
from flowprobe.exporters._encode import ffi, lib
from flowprobe.exporters.base import EncoderConfig, RecordEncoder

V5_HEADER = struct.Struct("!HHIIIIBBH")
V5_MAX_RECORDS = 30


class Netflow5Encoder(RecordEncoder):
    name = "netflow5"
    seq_attr = "flow_sequence"
    header_len = V5_HEADER.size

    def __init__(self, cfg: EncoderConfig):
        super().__init__(cfg)
        fields = templates.v5_record_fields()
        rec_len = sum(f.length for f in fields)
        assert rec_len == 48, rec_len
        fit = (cfg.mtu - self.header_len) // rec_len
        self.max_records = min(V5_MAX_RECORDS, fit)
        tmpl = templates.Template(0, fields)
        self._set_layout(tmpl.fields_cdata(ffi, lib), None, 1, 0, 0, 1,
                         self.max_records)
        self.flow_sequence = 0
        si = cfg.sampling_interval
        self._sampling = 0 if si <= 1 else (1 << 14) | min(si, 0x3FFF)

    def _header_fields(self, hdr):
        now = self.clock.now_ms
        hdr.version = 5
        hdr.uptime_ms = self.clock.uptime_ms(now)
        hdr.unix_secs = (now // 1000) & 0xFFFFFFFF
        hdr.unix_nsecs = (now % 1000) * 1_000_000
        hdr.engine = (self.cfg.engine_type & 0xFF) << 8 | (self.cfg.engine_id & 0xFF)
        hdr.sampling = self._sampling
