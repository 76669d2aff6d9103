"""Test helpers: real collectors (nfcapd, nfacctd) on 127.0.0.1 and free ports."""
import contextlib
import csv
import errno
import ipaddress
import os
import re
import signal
import socket
import subprocess
import time


def free_port(kind=socket.SOCK_DGRAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_netns(netns, argv):
    """argv run in network namespace `netns` (None: this one)."""
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


def udp_port_in_use(port, netns=None):
    if netns:
        out = subprocess.run(in_netns(netns, ["ss", "-Hnul", f"sport = :{port}"]),
                             capture_output=True, text=True).stdout
        return bool(out.strip())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


def udp_rx_queue(port, netns=None):
    """Bytes waiting in the receive queue of the UDP socket bound to
    `port` (0 when there is none), as `ss` shows them."""
    out = subprocess.run(in_netns(netns, ["ss", "-Hnul", f"sport = :{port}"]),
                         capture_output=True, text=True).stdout
    return sum(int(line.split()[1]) for line in out.splitlines() if line.strip())


@contextlib.contextmanager
def nfcapd(directory, port=None, timeout_s=10.0, netns=None):
    """Run `nfcapd -w DIR -p PORT -b 127.0.0.1 -B 4MiB` (in network namespace
    `netns` if given) until the block ends; SIGTERM makes it flush its
    file. Yields the port."""
    port = port or free_port()
    os.makedirs(directory, exist_ok=True)
    log = open(os.path.join(str(directory), os.pardir, f"nfcapd-{port}.log"), "w")
    # a 4 MiB socket buffer (net.core.rmem_max here): with the default one a
    # loaded machine made it drop a datagram the probe had sent (the probe's
    # own loopback capture held every sequence number; nfdump counted one
    # sequence failure)
    proc = subprocess.Popen(in_netns(netns, ["nfcapd", "-w", str(directory), "-p", str(port),
                                             "-b", "127.0.0.1", "-B", str(4 << 20)]),
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + timeout_s
        while not udp_port_in_use(port, netns):
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"nfcapd did not start on port {port}")
            time.sleep(0.05)
        yield port
    finally:
        time.sleep(0.3)          # let it drain its socket
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class Nfacctd:
    """pmacct's nfacctd on 127.0.0.1 with the `print` plugin writing CSV.

    Aggregates on the 5-tuple plus ToS. `log` is the daemon's own log file
    (at debug level, which lists each template it learns), `csv` the print
    plugin's output (written at exit)."""

    FIELDS = "src_host, dst_host, src_port, dst_port, proto, tos"

    def __init__(self, directory, renormalize=False, port=None, netns=None):
        self.netns = netns
        self.dir = str(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.port = port or free_port()
        self.log = os.path.join(self.dir, "nfacctd.log")
        self.csv = os.path.join(self.dir, "flows.csv")
        self.conf = os.path.join(self.dir, "nfacctd.conf")
        self.stderr = os.path.join(self.dir, "nfacctd.stderr")
        with open(self.conf, "w") as f:
            f.write("\n".join([
                "daemonize: false",
                f"logfile: {self.log}",
                f"pidfile: {os.path.join(self.dir, 'nfacctd.pid')}",
                "nfacctd_ip: 127.0.0.1",
                f"nfacctd_port: {self.port}",
                "nfacctd_pipe_size: 8388608",
                # the templates it learns are read from its debug log, not
                # from nfacctd_templates_file: pmacct 1.7.7 corrupts its heap
                # rewriting that file on template refreshes (under valgrind:
                # an off-by-one write into a calloc'd block and reads of a
                # FILE after fclose), and its core aborts with "malloc():
                # invalid size" where the heap layout lets it show
                "debug: true",
                f"nfacctd_renormalize: {'true' if renormalize else 'false'}",
                # the core hands records to the print plugin through a
                # pipe of buffers; at the defaults (344-byte buffers, 4 MB)
                # a loaded machine made the plugin miss data ("Missing data
                # detected") while everything had reached the core
                "plugin_buffer_size: 10240",
                "plugin_pipe_size: 104857600",
                "plugins: print[flows]",
                f"aggregate[flows]: {self.FIELDS}",
                "print_output[flows]: csv",
                f"print_output_file[flows]: {self.csv}",
                "print_refresh_time[flows]: 3600",
                "print_cache_entries[flows]: 65537",
                ""]))
        self.proc = None
        self.startup_log = ""

    def start(self, timeout_s=10.0):
        # a session of its own: stop() signals the core and its plugins together
        # its stdout/stderr go to a file: what it says before its log is
        # open, or as it dies (a libc abort), is not in its log file
        with open(self.stderr, "ab") as out:
            self.proc = subprocess.Popen(in_netns(self.netns, ["nfacctd", "-f", self.conf]),
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        end = time.monotonic() + timeout_s
        # ready: the socket is bound and the print plugin has its cache
        while not ("cache entries=" in self.read_log()
                   and udp_port_in_use(self.port, self.netns)):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"nfacctd did not start on port {self.port}:\n"
                                   + self.read_log())
            time.sleep(0.05)
        time.sleep(0.2)
        self.startup_log = self.read_log()
        return self

    def drain(self, seconds=0.5, timeout_s=10.0):
        """Wait until it has read its socket empty (bounded: a loaded
        machine left datagrams unread at the SIGINT, and the print plugin
        then had nothing to write), then `seconds` more for the core to
        hand the records to the plugin."""
        end = time.monotonic() + timeout_s
        while udp_rx_queue(self.port, self.netns) and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(seconds)

    def stop(self, timeout_s=20.0):
        """SIGINT to the core, which passes it on to its plugins once it has
        handed them everything; the print plugin then writes its cache and
        exits. Returns once no process of the group is left (the CSV is then
        complete). A plugin still there a while after the core is gone (the
        core does not always pass the signal on, and such a plugin would sit
        in poll() for ever and never write its CSV) gets the SIGINT itself;
        a group that does not go in time is killed and the stop fails."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        if self.proc.poll() is None:
            self.drain()
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        end = time.monotonic() + timeout_s
        nudged = False
        while time.monotonic() < end:
            self.proc.poll()
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            if not nudged and self.proc.returncode is not None and \
                    time.monotonic() > end - timeout_s + 3:
                os.killpg(pgid, signal.SIGINT)    # the plugin the core left behind
                nudged = True
            time.sleep(0.05)
        os.killpg(pgid, signal.SIGKILL)
        self.proc.wait()
        raise RuntimeError("nfacctd (core or plugin) did not exit on SIGINT")

    def diagnosis(self):
        """How the daemon is doing, for an assertion message: whether the
        core is still running (else its exit status, negative for a
        signal), the processes left in its group, its stdout/stderr and the
        tail of its log."""
        status = self.proc.poll() if self.proc else "not started"
        group = "".join(f"  {pid} {args}\n" for pid, args in _process_group(self.proc.pid)) \
            if self.proc else ""
        try:
            with open(self.stderr, errors="replace") as f:
                said = f.read()[-2000:]
        except FileNotFoundError:
            said = ""
        return (f"nfacctd core: {'running' if status is None else f'exit {status}'}\n"
                f"its process group:\n{group}stdout/stderr:\n{said}\n"
                f"log tail:\n{self.read_log()[-2000:]}")

    def read_log(self):
        try:
            with open(self.log) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_since_start(self):
        """What the daemon logged after its start-up lines, its debug lines
        left out (with `debug: true` it logs every message and template)."""
        rest = self.read_log()[len(self.startup_log):]
        return "".join(line for line in rest.splitlines(keepends=True)
                       if " DEBUG ( " not in line)

    def learned_templates(self):
        """{(template_id, kind)} of the templates it logged as learned, kind
        1 for options templates, 0 for flow templates."""
        out, kind = set(), None
        for line in self.read_log().splitlines():
            m = re.search(r"template type : (\w+)", line)
            if m:
                kind = 1 if m.group(1) == "options" else 0
                continue
            m = re.search(r"template ID\s*: (\d+)", line)
            if m and kind is not None:
                out.add((int(m.group(1)), kind))
                kind = None
        return out

    def flows(self):
        """{(src, dst, sport, dport, proto, tos): (packets, bytes)} from the
        CSV; addresses in canonical form, the protocol as a number."""
        out = {}
        if not os.path.exists(self.csv):
            raise AssertionError(f"nfacctd wrote no {self.csv}\n{self.diagnosis()}")
        with open(self.csv) as f:
            for row in csv.DictReader(f):
                proto = row["PROTOCOL"].strip()
                key = (str(ipaddress.ip_address(row["SRC_IP"])),
                       str(ipaddress.ip_address(row["DST_IP"])),
                       int(row["SRC_PORT"]), int(row["DST_PORT"]),
                       int(proto) if proto.isdigit() else socket.getprotobyname(proto),
                       int(row["TOS"]))
                p, b = out.get(key, (0, 0))
                out[key] = (p + int(row["PACKETS"]), b + int(row["BYTES"]))
        return out


def _process_group(pgid):
    """[(pid, command line)] of the processes in group `pgid`, from /proc
    (a minimal root has no ps)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            if int(stat[stat.rindex(")") + 2:].split()[2]) != pgid:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                out.append((int(pid), f.read().replace(b"\0", b" ").decode(errors="replace")))
        except (OSError, ValueError):
            continue
    return out


@contextlib.contextmanager
def nfacctd(directory, renormalize=False, port=None, netns=None):
    """A running Nfacctd until the block ends (then stopped, CSV written)."""
    d = Nfacctd(directory, renormalize=renormalize, port=port, netns=netns).start()
    try:
        yield d
    finally:
        d.stop()
