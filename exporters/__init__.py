"""Flow exporters: NetFlow v5, NetFlow v9 and IPFIX encoders (C record
encoding, exporters/encode.c) over UDP, TCP and file transports.

Entry point: `flowprobe.exporters.exporter.build_exporters(urls_or_configs)`.
"""
