"""flowprobe: a passive flow-export probe for Linux.

Packets (pcap/pcapng files now, AF_PACKET/AF_XDP rings later) are parsed and
aggregated into flows by C code reached through cffi; expired flows are
exported as IPFIX / NetFlow or printed as JSON. See probe/cli.py for the
``flowprobe`` command.
"""

__version__ = "0.1.0"
