"""Options data records, sent periodically beside the flow data.

- Sampling: IPFIX PSAMP selector report (RFC 5476): deterministic 1:N is
  selectorAlgorithm 1 (systematic count-based) with samplingPacketInterval 1
  / samplingPacketSpace N-1; random 1:N is selectorAlgorithm 3 (random
  n-out-of-N) with samplingSize 1 / samplingPopulation N. The v9 equivalent
  is samplingInterval N with samplingAlgorithm 1 (deterministic) or 2
  (random), RFC 3954.
- Sampling rate for collectors that scale (only when sampling 1:N, N > 1):
  nfdump 1.7.1 ignores both layouts above (it wants no selectorAlgorithm in
  IPFIX, no samplingAlgorithm in v9), so a second template (260,
  templates.*_sampling_rate_template) carries the same rate in the layout
  it reads: IPFIX samplingPacketInterval/Space (deterministic) or
  samplingInterval (random) under the same selectorId, v9 samplingInterval
  alone. pmacct's nfacctd reads either.
- Statistics (RFC 7011 sections 4.1-4.3): exported messages, octets and flow
  records, packets the engine ignored, flow records not sent. Packets the
  sampler did not select are not "ignored" (sampling is part of the
  Metering Process, RFC 5474/5476; README, Exporting).

The templates come from templates.py; values are packed here in template
order, each field at its template length. Each options template goes in a
set of its own: nfdump 1.7.1 reads only the first options template of a
set, and nfacctd 1.7.7 steps from one to the next with a v9 length
formula, misses the second and logs the set as malformed.
"""
from __future__ import annotations

SELECTOR_SYSTEMATIC_COUNT = 1   # IANA PSAMP selectorAlgorithm
SELECTOR_RANDOM_N_OUT_OF_N = 3
V9_SAMPLING_DETERMINISTIC = 1   # RFC 3954 SAMPLING_ALGORITHM
V9_SAMPLING_RANDOM = 2
SAMPLING_MODES = ("deterministic", "random")


def pack_values(template, values: dict) -> bytes:
    out = bytearray()
    for f in template.fields:
        v = int(values.get(f.name, 0))
        maxv = (1 << (8 * f.length)) - 1
        out += min(max(v, 0), maxv).to_bytes(f.length, "big")
    return bytes(out)


def sampling_values(cfg, v9: bool) -> dict:
    n = max(1, cfg.sampling_interval)
    random = cfg.sampling_mode == "random"
    if v9:
        return {"exportingProcessId": cfg.exporting_process_id,
                "samplingInterval": n,
                "samplingAlgorithm": V9_SAMPLING_RANDOM if random
                else V9_SAMPLING_DETERMINISTIC}
    if random:
        return {"selectorId": cfg.domain_id or 1,
                "selectorAlgorithm": SELECTOR_RANDOM_N_OUT_OF_N,
                "samplingSize": 1,
                "samplingPopulation": n}
    return {"selectorId": cfg.domain_id or 1,
            "selectorAlgorithm": SELECTOR_SYSTEMATIC_COUNT,
            "samplingPacketInterval": 1,
            "samplingPacketSpace": n - 1}


def sampling_rate_values(cfg, v9: bool) -> dict:
    n = max(1, cfg.sampling_interval)
    if v9:
        return {"exportingProcessId": cfg.exporting_process_id, "samplingInterval": n}
    if cfg.sampling_mode == "random":
        return {"selectorId": cfg.domain_id or 1, "samplingInterval": n}
    return {"selectorId": cfg.domain_id or 1,
            "samplingPacketInterval": 1,
            "samplingPacketSpace": n - 1}


def stats_values(cfg, stats: dict) -> dict:
    return {"exportingProcessId": cfg.exporting_process_id,
            "exportedMessageTotalCount": stats.get("messages", 0),
            "exportedOctetTotalCount": stats.get("bytes", 0),
            "exportedFlowRecordTotalCount": stats.get("records_exported", 0),
            "ignoredPacketTotalCount": stats.get("ignored_packets", 0),
            "notSentFlowTotalCount": stats.get("records_not_sent", 0)}


def options_records(encoder, stats: dict, v9: bool) -> list:
    """[(template, one data record)] for the sampling, sampling rate (when
    sampling) and statistics options, in the order they go out."""
    cfg = encoder.cfg
    out = [(encoder.sampling_tmpl, sampling_values(cfg, v9))]
    if encoder.sampling_rate_tmpl is not None:
        out.append((encoder.sampling_rate_tmpl, sampling_rate_values(cfg, v9)))
    out.append((encoder.stats_tmpl, stats_values(cfg, stats)))
    return [(t, pack_values(t, values)) for t, values in out]


def options_templates(encoder) -> list:
    """The encoder's options templates, in the same order."""
    return [t for t in (encoder.sampling_tmpl, encoder.sampling_rate_tmpl, encoder.stats_tmpl)
            if t is not None]
