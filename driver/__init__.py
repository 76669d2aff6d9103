"""Capture drivers: live rings (afpacket: TPACKET_V3, afxdp: AF_XDP, chosen
in capture.py), capture files (pcapfile), the capture-only NIC (nic)."""
