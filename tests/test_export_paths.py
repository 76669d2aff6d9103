"""One export path: `--export URL` and a YAML `export:` item become the same
typed ExportConfig through the schema, and `replay` sends the same bytes
either way, for every scheme."""
import socket
import subprocess
import sys
import threading

import pytest

import synth
from flowprobe.config import (SCHEMES, ConfigError, ExportConfig, default_config,
                              export_config, export_items, load_config_text)
from flowprobe.exporters.exporter import build_exporter

#: the NetFlow/IPFIX schemes (zmq:// and zmq+connect://, which need a port
#: and carry no templates, are tested in test_ntopng_export.py)
NETFLOW_SCHEMES = [k for k, v in SCHEMES.items() if v.format != "ntopng"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowprobe", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    path = tmp_path_factory.mktemp("paths") / "s.pcap"
    synth.generate(path, flows=400, packets=5000, seed=5)
    return path


class UdpSink:
    """Every datagram sent to 127.0.0.1:port, in order (one sender, loopback)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def take(self) -> list[bytes]:
        self.sock.settimeout(0.3)
        out = []
        try:
            while True:
                out.append(self.sock.recv(65535))
        except TimeoutError:
            return out
        finally:
            self.sock.close()


class TcpSink:
    """The byte stream of one connection to 127.0.0.1:port."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.data = bytearray()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(60)
        conn, _ = self.sock.accept()
        with conn:
            while chunk := conn.recv(65536):
                self.data += chunk

    def take(self) -> list[bytes]:
        self.thread.join(60)
        self.sock.close()
        return [bytes(self.data)]


def export_once(capture, tmp_path, scheme: str, form: str, tag: str) -> list[bytes]:
    """Replay ``capture`` exporting to ``scheme`` given as --export URL
    (form "url") or as a YAML export item (form "yaml"); what was sent."""
    transport = SCHEMES[scheme].transport
    sink = {"udp": UdpSink, "tcp": TcpSink}.get(transport, lambda: None)()
    out = tmp_path / f"{tag}.ipfix"
    url = f"{scheme}://{out}" if transport == "file" else f"{scheme}://127.0.0.1:{sink.port}"
    args = ["replay", str(capture)]
    if form == "url":
        args += ["--export", url]
    else:
        cfg = tmp_path / f"{tag}.yaml"
        cfg.write_text(f"export:\n  - url: '{url}'\n")
        args += ["-c", str(cfg)]
    proc = run_cli(*args)
    # TCP: messages still in the socket at close are not yet credited as
    # exported (issue 12 item 3, the sending side), which replay reports as
    # EXPORT_INCOMPLETE although the collector got every byte.
    ok = (0, 6) if transport == "tcp" else (0,)
    assert proc.returncode in ok, proc.stderr
    return [out.read_bytes()] if sink is None else sink.take()


@pytest.mark.parametrize("scheme", NETFLOW_SCHEMES)
def test_url_and_yaml_forms_send_identical_bytes(capture, tmp_path, scheme):
    """The same capture replayed with `--export URL` and with the URL as a
    YAML export item: byte-identical messages (times are packet times, so
    the export time in each header is the same too)."""
    by_url = export_once(capture, tmp_path, scheme, "url", "u")
    by_yaml = export_once(capture, tmp_path, scheme, "yaml", "y")
    assert sum(map(len, by_url)) > 10_000
    if SCHEMES[scheme].transport == "tcp":
        # The reliability statistics (RFC 7011 4.3) of the options record at
        # close count what the TCP socket had taken by then: timing, not config.
        by_url, by_yaml = without_stats(by_url[0]), without_stats(by_yaml[0])
    assert by_url == by_yaml


TID_STATS = 259     # the statistics options template (exporters' template ids)


def without_stats(stream: bytes) -> list[bytes]:
    """The IPFIX messages of a stream, the data sets of the statistics
    options template zeroed."""
    out, i = [], 0
    while i < len(stream):
        msg = bytearray(stream[i:i + int.from_bytes(stream[i + 2:i + 4], "big")])
        j = 16
        while j < len(msg):
            set_id, length = int.from_bytes(msg[j:j + 2], "big"), int.from_bytes(msg[j + 2:j + 4], "big")
            if set_id == TID_STATS:
                msg[j + 4:j + length] = bytes(length - 4)
            j += length
        out.append(bytes(msg))
        i += len(msg)
    return out


@pytest.mark.parametrize("scheme", NETFLOW_SCHEMES)
def test_url_and_yaml_forms_are_the_same_typed_config(scheme):
    """Both forms give the same ExportConfig, with the schema's defaults,
    for a replay and for each live reader."""
    url = "ipfix+file:///tmp/f.ipfix" if SCHEMES[scheme].transport == "file" \
        else f"{scheme}://198.18.0.9"
    from_yaml = load_config_text(f"export:\n  - {url}\n  - url: {url}\n", "t")
    by_url = export_items(default_config(), [url, url])
    assert from_yaml.export == by_url == (ExportConfig(url=url),) * 2
    for reader in (None, 0, 3):
        assert export_items(from_yaml, [], reader) == export_items(default_config(), [url, url],
                                                                   reader)
    (e,) = export_items(default_config(), [url])
    assert e.template_refresh_messages == ExportConfig.__dataclass_fields__[
        "template_refresh_messages"].default
    exp = build_exporter(url)
    assert exp.policy.every_messages == (e.template_refresh_messages
                                         if e.transport == "udp" else 0)
    assert exp.encoder.cfg.mtu == e.mtu and exp.encoder.cfg.domain_id == e.observation_domain
    if e.transport != "file":
        assert (exp.transport.host, exp.transport.port) == (e.host, SCHEMES[scheme].default_port)


def test_bad_items_are_config_errors_named_by_form():
    """A bad --export URL names --export; a bad mapping names its key; the
    UDP payload limit is the schema's, in both forms."""
    with pytest.raises(ConfigError) as e:
        export_items(default_config(), ["udpp://x", "ipfix://h:1/path"])
    assert [m.split(":")[0] for m in e.value.messages] == ["--export", "--export"]
    with pytest.raises(ConfigError) as e:
        export_config({"url": "ipfix://h", "mtu": 65535})
    assert e.value.messages == ["export.mtu: 65535: a UDP payload is at most 65507 bytes"]
    with pytest.raises(ConfigError) as e:
        load_config_text("export:\n  - url: netflow9://h\n    mtu: 65535\n", "t")
    assert e.value.messages == ["export[0].mtu (line 3): 65535: a UDP payload is at most "
                                "65507 bytes"]
    export_config({"url": "ipfix+tcp://h", "mtu": 65535})       # TCP: fine
