"""IPFIX over TCP: a collector that dies mid-run and comes back. Every
record is either delivered (exactly once, by message sequence number) or
counted as not sent; the new connection starts with the templates."""
import socket
import struct
import time

from flowprobe.exporters import templates
from flowprobe.exporters.exporter import build_exporter
from records import FIXED, address, make_records
from collectors import free_port

REC_LEN = {t.template_id: t.record_length for t in templates.ipfix_flow_templates()}


class TcpCollector:
    """A minimal IPFIX/TCP collector driven from the test thread."""

    def __init__(self, port):
        self.port = port
        self.conns = []          # per connection: list of messages
        self.lsock = None
        self.conn = None
        self.buf = b""

    def start(self):
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(1)
        self.lsock.setblocking(False)

    def pump(self):
        if self.conn is None and self.lsock is not None:
            try:
                self.conn, _ = self.lsock.accept()
                self.conn.setblocking(False)
                self.conns.append([])
                self.buf = b""
            except BlockingIOError:
                return
        while self.conn is not None:
            try:
                data = self.conn.recv(1 << 20)
            except BlockingIOError:
                break
            if not data:
                break
            self.buf += data
            while len(self.buf) >= 4:
                length = struct.unpack_from("!H", self.buf, 2)[0]
                if len(self.buf) < length:
                    break
                self.conns[-1].append(self.buf[:length])
                self.buf = self.buf[length:]

    def kill(self):
        """Read what has arrived, then reset the connection (no FIN)."""
        self.pump()
        if self.conn is not None:
            self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.conn.close()
            self.conn = None
        self.lsock.close()
        self.lsock = None

    def data_records(self):
        """{sequence: records} of every complete data message received."""
        out = {}
        for msgs in self.conns:
            for m in msgs:
                seq = struct.unpack_from("!I", m, 8)[0]
                off, n = 16, 0
                while off < len(m):
                    sid, slen = struct.unpack_from("!HH", m, off)
                    if sid in REC_LEN:
                        n += (slen - 4) // REC_LEN[sid]
                    off += slen
                if n:
                    assert out.get(seq, n) == n
                    out[seq] = n
        return out


def test_tcp_collector_restart_loses_nothing_uncounted():
    """Kill the collector mid-run and restart it: delivered + not sent ==
    exported records, overflow of the bounded buffer is counted, and each
    connection begins with a template set."""
    port = free_port(socket.SOCK_STREAM)
    col = TcpCollector(port)
    col.start()
    exp = build_exporter({"url": f"ipfix+tcp://127.0.0.1:{port}", "max_buffer_bytes": 65_536,
                          "mtu": 1400, "backoff_max_s": 0.1})
    exp.open()
    total = 0
    batches = 0
    deadline = time.monotonic() + 60
    while batches < 90 and time.monotonic() < deadline:
        specs = [dict(FIXED[i % 4], src_port=batches, dst_port=i) for i in range(100)]
        arr = make_records(specs)
        exp.sink(address(arr), len(specs))
        total += len(specs)
        batches += 1
        if batches == 30:
            col.kill()
        elif batches == 60:
            col.start()
        col.pump()
        exp.tick()
        time.sleep(0.005)
    # let the exporter reconnect and drain its buffer
    end = time.monotonic() + 10
    while (exp.transport.state != "up" or exp.transport.queue) and time.monotonic() < end:
        exp.tick()
        col.pump()
        time.sleep(0.01)
    exp.close()
    for _ in range(50):
        col.pump()
        time.sleep(0.01)
    st = exp.stats()
    delivered = sum(col.data_records().values())
    assert st["transport"]["connects"] == 2
    assert st["records_not_sent"] > 0                      # the buffer did overflow
    assert delivered + st["records_not_sent"] == total
    assert st["records_exported"] == delivered
    for msgs in col.conns:
        assert struct.unpack_from("!H", msgs[0], 16)[0] == 2   # template set first
