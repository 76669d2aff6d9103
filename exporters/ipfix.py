"""IPFIX encoder (RFC 7011).

Header: version 10, length, export time (packet clock, seconds), sequence
number = data records (flow and options data) sent before this message in
this observation domain, mod 2**32, and the observation domain id.
Flow times are flowStart/EndMilliseconds = first/last packet time in ms.
"""
from __future__ import annotations

import struct

from flowprobe.exporters import templates
from flowprobe.exporters._encode import ffi, lib
from flowprobe.exporters.base import EncoderConfig, RecordEncoder
from flowprobe.exporters.options import options_records, options_templates

IPFIX_HEADER = struct.Struct("!HHIII")
SET_TEMPLATE = 2
SET_OPTIONS_TEMPLATE = 3


def _set(set_id: int, body: bytes) -> bytes:
    return struct.pack("!HH", set_id, 4 + len(body)) + body


class IpfixEncoder(RecordEncoder):
    name = "ipfix"
    header_len = IPFIX_HEADER.size

    def __init__(self, cfg: EncoderConfig):
        super().__init__(cfg)
        self.templates = templates.ipfix_flow_templates(cfg.application)
        self.sampling_tmpl = templates.ipfix_sampling_template(cfg.sampling_mode)
        self.sampling_rate_tmpl = (templates.ipfix_sampling_rate_template(cfg.sampling_mode)
                                   if cfg.sampling_interval > 1 else None)
        self.stats_tmpl = templates.stats_template()
        t4, t6 = self.templates
        self._set_layout(t4.fields_cdata(ffi, lib), t6.fields_cdata(ffi, lib),
                         t4.template_id, t6.template_id, 1, 1)
        self.sequence = 0
        self._template_body = None

    def _header(self, length: int, ndata: int) -> bytes:
        hdr = IPFIX_HEADER.pack(10, length, (self.clock.now_ms // 1000) & 0xFFFFFFFF,
                                self.sequence & 0xFFFFFFFF, self.cfg.domain_id)
        self.sequence += ndata
        return hdr

    def _header_fields(self, hdr):
        hdr.version = 10
        hdr.unix_secs = (self.clock.now_ms // 1000) & 0xFFFFFFFF
        hdr.domain_id = self.cfg.domain_id

    def template_parts(self):
        if self._template_body is None:    # built once: every refresh resends it
            # one options template per set (options.py says why)
            self._template_body = (
                _set(SET_TEMPLATE, b"".join(t.ipfix_record() for t in self.templates))
                + b"".join(_set(SET_OPTIONS_TEMPLATE, t.ipfix_record())
                           for t in options_templates(self)), 0)
        return self._template_body

    def template_message(self):
        body, _ = self.template_parts()
        return self._header(self.header_len + len(body), 0) + body

    def options_message(self, stats: dict):
        sets = [_set(t.template_id, rec) for t, rec in options_records(self, stats, v9=False)]
        body = b"".join(sets)
        return self._header(self.header_len + len(body), len(sets)) + body
