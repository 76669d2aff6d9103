"""flowprobe: a passive flow-export probe for Linux.

Packets from capture files (pcap/pcapng) or live rings (AF_PACKET
TPACKET_V3, AF_XDP) are parsed and aggregated into flows by C code reached
through cffi; expired flows are exported as IPFIX / NetFlow or printed as
JSON. See probe/cli.py for the ``flowprobe`` command.

Packages, each importing only those below it: probe/ (commands, supervisor,
readers, the flow table) over driver/ (capture), exporters/ (encoders and
transports) and collector/ (the built-in collector); config/ and the base
modules errors.py and logs.py under them all.
"""

__version__ = "0.1.0"
