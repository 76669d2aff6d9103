"""Test helpers: real collectors (nfcapd) on 127.0.0.1 and free ports."""
import contextlib
import errno
import os
import signal
import socket
import subprocess
import time


def free_port(kind=socket.SOCK_DGRAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def udp_port_in_use(port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


@contextlib.contextmanager
def nfcapd(directory, port=None, timeout_s=10.0):
    """Run `nfcapd -w DIR -p PORT -b 127.0.0.1` until the block ends; SIGTERM
    makes it flush its file. Yields the port."""
    port = port or free_port()
    os.makedirs(directory, exist_ok=True)
    log = open(os.path.join(str(directory), os.pardir, f"nfcapd-{port}.log"), "w")
    proc = subprocess.Popen(["nfcapd", "-w", str(directory), "-p", str(port),
                             "-b", "127.0.0.1"], stdout=log, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + timeout_s
        while not udp_port_in_use(port):
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
