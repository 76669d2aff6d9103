"""Test helper: collect UDP datagrams on 127.0.0.1 and write them as a pcap
(Ethernet/IPv4/UDP framing built here) for tshark, without capturing."""
import socket
import struct
import threading
import time


def _csum(b):
    if len(b) & 1:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def frame(payload, sport, dport, src="127.0.0.1", dst="127.0.0.1", ident=0):
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident & 0xFFFF, 0x4000,
                     64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return b"\x02\0\0\0\0\x02" + b"\x02\0\0\0\0\x01" + b"\x08\x00" + ip + udp


def write_pcap(path, datagrams, dport):
    """datagrams: [(ts_float, payload, (src_ip, src_port))]."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for i, (ts, data, (sip, sport)) in enumerate(datagrams):
            fr = frame(data, sport, dport, sip, "127.0.0.1", i)
            sec, usec = int(ts), int((ts - int(ts)) * 1e6)
            f.write(struct.pack("<IIII", sec, usec, len(fr), len(fr)) + fr)


class UdpRecorder:
    """Receives datagrams on 127.0.0.1:port in a thread (large SO_RCVBUF)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.datagrams = []
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            self.datagrams.append((time.time(), data, addr))

    def stop(self, idle_s=0.5):
        n = -1
        while n != len(self.datagrams):
            n = len(self.datagrams)
            time.sleep(idle_s)
        self._stop = True
        self._t.join()
        self.sock.close()
        return self.datagrams
