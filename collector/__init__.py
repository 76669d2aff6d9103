"""The built-in collector: receives NetFlow v5/v9 and IPFIX and prints flows.

A consumer of exports, not an exporter: it shares no code with exporters/
and imports only the base modules (errors, logs).

  server.py    ``Collector``: UDP and TCP listeners and RFC 5655 files
  decode.py    ``MessageDecoder``: IPFIX and v9 messages, templates, sequence checks
  records.py   data records decoded by a received template
  netflow5.py  NetFlow v5 messages (fixed layout, no templates)
  cli.py       ``flowprobe collect``
"""
