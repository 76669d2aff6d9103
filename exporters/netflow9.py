"""NetFlow v9 encoder (RFC 3954).

Header: version, count (records of every kind in the packet), sysUptime,
unix_secs, package_sequence (export packets sent before this one), source id.
Flow times are First/LastSwitched relative to the virtual boot time; the
header's unix_secs/sysUptime pair follows the packet clock so that
unix_secs*1000 - sysUptime + First is the first packet's time in ms.
Sets are padded to 4 bytes (RFC 3954 section 5.3).
"""
from __future__ import annotations

import struct

from flowprobe.exporters import templates
from flowprobe.exporters._encode import ffi, lib
from flowprobe.exporters.base import EncoderConfig, RecordEncoder
from flowprobe.exporters.options import options_records, options_templates

V9_HEADER = struct.Struct("!HHIIII")
SET_TEMPLATE = 0
SET_OPTIONS_TEMPLATE = 1


def _set(set_id: int, body: bytes) -> bytes:
    pad = (-(4 + len(body))) % 4
    return struct.pack("!HH", set_id, 4 + len(body) + pad) + body + b"\0" * pad


class Netflow9Encoder(RecordEncoder):
    name = "netflow9"
    seq_attr = "package_sequence"
    header_len = V9_HEADER.size

    def __init__(self, cfg: EncoderConfig):
        super().__init__(cfg)
        self.templates = templates.v9_flow_templates(cfg.application)
        self.sampling_tmpl = templates.v9_sampling_template()
        self.sampling_rate_tmpl = (templates.v9_sampling_rate_template()
                                   if cfg.sampling_interval > 1 else None)
        self.stats_tmpl = templates.stats_template()
        t4, t6 = self.templates
        self._set_layout(t4.fields_cdata(ffi, lib), t6.fields_cdata(ffi, lib),
                         t4.template_id, t6.template_id, 1, 4)
        self.package_sequence = 0
        self._template_body = None

    def _header(self, count: int) -> bytes:
        now = self.clock.now_ms
        secs = now // 1000
        # uptime from the truncated second: collectors compute
        # boot = unix_secs*1000 - sysUptime, which must be exact.
        hdr = V9_HEADER.pack(9, count, self.clock.uptime_ms(secs * 1000), secs,
                             self.package_sequence & 0xFFFFFFFF, self.cfg.domain_id)
        self.package_sequence += 1
        return hdr

    def _header_fields(self, hdr):
        secs = self.clock.now_ms // 1000
        hdr.version = 9
        hdr.uptime_ms = self.clock.uptime_ms(secs * 1000)
        hdr.unix_secs = secs & 0xFFFFFFFF
        hdr.domain_id = self.cfg.domain_id

    def template_parts(self):
        if self._template_body is None:     # built once: every refresh resends it
            # one options template per set (options.py says why)
            opts = [_set(SET_OPTIONS_TEMPLATE, t.v9_record()) for t in options_templates(self)]
            self._template_body = (
                _set(SET_TEMPLATE, b"".join(t.v9_record() for t in self.templates))
                + b"".join(opts), len(self.templates) + len(opts))
        return self._template_body

    def template_message(self):
        body, count = self.template_parts()
        return self._header(count) + body

    def options_message(self, stats: dict):
        sets = [_set(t.template_id, rec)
                for t, rec in options_records(self, stats, v9=True)]
        return self._header(len(sets)) + b"".join(sets)
