"""The Debian package (packaging/): build, lintian, the systemd unit, and
install / upgrade / purge in a clean Debian root made with debootstrap.

The .deb is built once per session. The debootstrap root is cached under
/var/cache/flowprobe-test (FLOWPROBE_TEST_CACHE), keyed by release and
package list, so only the first run pays for it (about a minute); each test
installs into its own copy.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import synth

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"
CACHE = Path(os.environ.get("FLOWPROBE_TEST_CACHE", "/var/cache/flowprobe-test"))
RELEASE = "bookworm"
# the package's Depends, plus systemd and procps so that `systemd-analyze
# verify --root` finds the targets and /bin/kill the unit refers to
INCLUDE = "python3,libpcap0.8,libxdp1,libbpf1,libndpi4.2,adduser,systemd,procps"
VERSION = re.search(r'^__version__ = "([^"]+)"', (REPO / "__init__.py").read_text(), re.M)[1]
UPGRADE_VERSION = VERSION + "+test1"
CONFIG = "/etc/flowprobe/flowprobe.yaml"
UNIT = "/lib/systemd/system/flowprobe.service"
MAX_EXPOSURE = 2.0


def sh(argv, check=True, timeout=300, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} exit {proc.returncode}\n{proc.stdout[-3000:]}"
                             f"\n{proc.stderr[-3000:]}")
    return proc


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("installing into a chroot needs root (CI runs as root)")


def build(out: Path, version: str) -> Path:
    sh([str(PACKAGING / "build-deb.sh"), str(out)], env={**os.environ, "DEB_VERSION": version})
    arch = sh(["dpkg", "--print-architecture"]).stdout.strip()
    deb = out / f"flowprobe_{version}_{arch}.deb"
    assert deb.is_file(), sorted(out.iterdir())
    return deb


@pytest.fixture(scope="session")
def deb(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("deb"), VERSION)


@pytest.fixture(scope="session")
def deb_upgrade(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("deb-upgrade"), UPGRADE_VERSION)


@pytest.fixture(scope="session")
def unpacked(deb, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("unpacked")
    sh(["dpkg-deb", "-x", str(deb), str(root)])
    return root


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb.debian.org by default)."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        for m in re.finditer(r"(?:^URIs:\s*|^deb\s+(?:\[[^]]*\]\s+)?)(\S+/debian)/?\s*$"
                             r"|^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s+" + RELEASE + r"\s",
                             text, re.M):
            return m.group(1) or m.group(2)
    return "http://deb.debian.org/debian"


@pytest.fixture(scope="session")
def base_root() -> Path:
    """A clean minbase Debian root with the package's dependencies (cached)."""
    need_root()
    key = hashlib.sha256(f"{RELEASE} {INCLUDE}".encode()).hexdigest()[:10]
    root = CACHE / f"{RELEASE}-minbase-{key}"
    if (root / "usr/bin/python3").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / f"{root.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    mirror = apt_mirror()
    proc = sh(["debootstrap", "--variant=minbase", f"--include={INCLUDE}", RELEASE,
               str(tmp), mirror], check=False, timeout=900)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.fail(f"debootstrap {RELEASE} from {mirror} failed (exit {proc.returncode}):\n"
                    f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    tmp.rename(root)
    return root


@pytest.fixture
def root(base_root, tmp_path) -> Path:
    """A throw-away copy of the cached root."""
    dest = tmp_path / "root"
    sh(["cp", "-a", "--reflink=auto", str(base_root), str(dest)])
    yield dest
    shutil.rmtree(dest, ignore_errors=True)


def chroot(root: Path, *argv: str, check=True) -> subprocess.CompletedProcess:
    return sh(["chroot", str(root), *argv], check=check, stdin=subprocess.DEVNULL,
              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                   "DEBIAN_FRONTEND": "noninteractive"})


def install(root: Path, deb: Path) -> subprocess.CompletedProcess:
    shutil.copy(deb, root / "tmp" / deb.name)
    return chroot(root, "dpkg", "-i", f"/tmp/{deb.name}")


# ------------------------------------------------------------------ the .deb

def test_deb_contents(deb, unpacked):
    """Name, control fields, conffile and the installed paths."""
    assert re.fullmatch(r"flowprobe_[0-9][^_]*_[a-z0-9]+\.deb", deb.name)
    info = sh(["dpkg-deb", "-f", str(deb), "Package", "Version", "Depends"]).stdout
    assert f"Version: {VERSION}" in info
    for dep in ("libpcap0.8", "libxdp1", "libbpf1", "libndpi4.2", "python3 (>= 3.11)"):
        assert dep in info
    assert sh(["dpkg-deb", "--ctrl-tarfile", str(deb)]).returncode == 0
    ctrl = Path(str(unpacked) + ".ctrl")
    sh(["dpkg-deb", "-e", str(deb), str(ctrl)])
    assert (ctrl / "conffiles").read_text().split() == [CONFIG]
    for path in ("usr/bin/flowprobe", CONFIG[1:], UNIT[1:], "usr/share/man/man1/flowprobe.1.gz",
                 "usr/share/doc/flowprobe/copyright", "usr/lib/flowprobe/flowprobe/__init__.py",
                 "usr/lib/flowprobe/yaml/__init__.py", "usr/lib/flowprobe/_cffi_backend"
                 ".cpython-311-x86_64-linux-gnu.so", "usr/share/flowprobe/afxdp.conf"):
        assert (unpacked / path).exists(), path
    exts = sorted(p.name for p in (unpacked / "usr/lib/flowprobe/flowprobe").rglob("*.so"))
    assert {"_flowtable.abi3.so", "_pcapfile.abi3.so", "_afpacket.abi3.so",
            "_afxdp.abi3.so", "_encode.abi3.so"} <= set(exts)
    lib = unpacked / "usr/lib/flowprobe/flowprobe"
    assert (lib / "include/ft_records.h").exists()
    assert not (lib / "setup.py").exists()   # the build script is no module
    assert not list(unpacked.rglob("__pycache__"))
    assert (unpacked / CONFIG[1:]).read_text() == (REPO / "config/flowprobe.yaml").read_text()
    man = sh(["zcat", str(unpacked / "usr/share/man/man1/flowprobe.1.gz")]).stdout
    assert ".SS run" in man and "--user" in man


def test_lintian_reports_no_errors(deb):
    out = sh(["lintian", "--no-cfg", str(deb)], check=False)
    lines = (out.stdout + out.stderr).splitlines()
    errors = [line for line in lines if line.startswith("E:")]
    assert not errors, "\n".join(lines)


def test_unit_security_exposure(unpacked):
    """systemd-analyze security rates the shipped unit at 2.0 or lower."""
    out = sh(["systemd-analyze", "security", "--offline=true", "--no-pager",
              str(unpacked / UNIT[1:])], check=False)
    m = re.search(r"Overall exposure level for flowprobe\.service: (\d+\.\d+)", out.stdout)
    assert m, out.stdout + out.stderr
    assert float(m[1]) <= MAX_EXPOSURE, out.stdout
    assert out.returncode == 0


def test_unit_settings(unpacked):
    unit = (unpacked / UNIT[1:]).read_text()
    for line in ("Type=notify", "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID",
                 "User=flowprobe", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "ProtectHome=yes", "PrivateTmp=yes", "RuntimeDirectory=flowprobe",
                 "CapabilityBoundingSet=CAP_NET_RAW CAP_NET_ADMIN",
                 "AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN",
                 "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_PACKET AF_NETLINK",
                 "ExecStartPre=+/usr/bin/flowprobe service pre-start",
                 "ExecStopPost=+/usr/bin/flowprobe service post-stop"):
        assert line in unit, line
    assert re.search(r"^WatchdogSec=\d+", unit, re.M)
    assert re.search(r"^SystemCallFilter=@system-service$", unit, re.M)


# ------------------------------------------------------------------ in a clean root

def test_install_run_verify_purge(root, deb):
    """Install into a clean Debian root: the command runs from the installed
    files, the unit verifies clean, purge removes the user and the config."""
    install(root, deb)
    assert chroot(root, "flowprobe", "--version").stdout.strip() == f"flowprobe {VERSION}"
    check = chroot(root, "flowprobe", "config", "check", CONFIG)
    assert "max_flows: 262144" in check.stdout and "prepare_nic: false" in check.stdout
    # the C extensions and libpcap load: replay the bundled sample capture
    demo = "/usr/lib/flowprobe/flowprobe/probe/data/demo.pcap"
    flows = chroot(root, "flowprobe", "replay", demo, "--json").stdout.splitlines()
    assert flows and all(line.startswith("{") for line in flows)
    assert chroot(root, "flowprobe", "service", "pre-start").returncode == 0
    pw = chroot(root, "getent", "passwd", "flowprobe").stdout.strip().split(":")
    assert pw[5] == "/nonexistent" and pw[6] == "/usr/sbin/nologin"
    assert chroot(root, "getent", "group", "flowprobe").returncode == 0
    assert list((root / "usr/lib/flowprobe").rglob("__pycache__"))   # postinst compiled
    verify = sh(["systemd-analyze", "verify", f"--root={root}", UNIT], check=False,
                env={**os.environ, "MANPATH": str(root / "usr/share/man")})
    assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), \
        verify.stdout + verify.stderr
    chroot(root, "dpkg", "--purge", "flowprobe")
    assert chroot(root, "getent", "passwd", "flowprobe", check=False).returncode == 2
    assert chroot(root, "getent", "group", "flowprobe", check=False).returncode == 2
    assert not (root / "etc/flowprobe").exists()
    assert not (root / "usr/lib/flowprobe").exists()
    assert not (root / "usr/bin/flowprobe").exists()


def test_upgrade_keeps_modified_config(root, deb, deb_upgrade):
    """conffile: a locally modified /etc/flowprobe/flowprobe.yaml survives an
    upgrade to a rebuilt package with a bumped version (no prompt: stdin is
    /dev/null), and the user is not created twice."""
    install(root, deb)
    conf = root / CONFIG[1:]
    modified = conf.read_text().replace("  max_flows: 262144", "  max_flows: 1000")
    assert modified != conf.read_text()
    conf.write_text(modified)
    uid = chroot(root, "id", "-u", "flowprobe").stdout
    install(root, deb_upgrade)
    assert chroot(root, "dpkg-query", "-W", "-f", "${Version}", "flowprobe").stdout == \
        UPGRADE_VERSION
    assert conf.read_text() == modified
    assert not (root / (CONFIG[1:] + ".dpkg-dist")).exists()
    assert "max_flows: 1000" in chroot(root, "flowprobe", "config", "check", CONFIG).stdout
    assert chroot(root, "id", "-u", "flowprobe").stdout == uid
    # removal (not purge) keeps the config and the user
    chroot(root, "dpkg", "--remove", "flowprobe")
    assert conf.read_text() == modified
    assert chroot(root, "getent", "passwd", "flowprobe").returncode == 0


# ------------------------------------------------------------------ under systemd

def _wait(pred, timeout: float, what: str, detail=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{detail()}")


def processes_in(root: Path) -> list[int]:
    """PIDs of the processes whose root directory is `root` (a container's)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "root") == str(root):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


class Container:
    """The installed root booted by systemd-nspawn (systemd 252 as PID 1) in
    a private network namespace; commands run in it with nsenter.

    A context manager. The boot wait is bounded (``boot_timeout_s``), and a
    container that fails to boot is torn down before the error is raised:
    nothing of it outlives the test."""

    BOOT_TIMEOUT_S = 120
    STOP_TIMEOUT_S = 30

    def __init__(self, root: Path, boot_timeout_s: float = BOOT_TIMEOUT_S):
        self.root = root
        self.init: int | None = None
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-q", "-D", str(root), "-b", "--register=no", "--keep-unit",
             "--private-network", "--capability=CAP_BPF,CAP_PERFMON",
             "--system-call-filter=bpf"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            self.init = _wait(self._init_pid, 30, "the container's systemd")
            _wait(lambda: self.state() in ("running", "degraded"), boot_timeout_s,
                  "the container to boot", detail=self.boot_report)
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> "Container":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _init_pid(self) -> int | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited: {self.proc.stderr.read()}")
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return None
        for pid in kids.split():
            if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                return int(pid)
        return None

    def state(self) -> str:
        return self.run("systemctl", "is-system-running", check=False).stdout.strip()

    def boot_report(self) -> str:
        """What the container's systemd is still doing (for a boot timeout)."""
        jobs = self.run("systemctl", "list-jobs", "--no-pager", check=False).stdout
        return f"is-system-running: {self.state()}\n{jobs[-2000:]}"

    def run(self, *argv: str, check=True) -> subprocess.CompletedProcess:
        return sh(["nsenter", "-t", str(self.init), "-a", *argv], check=check, timeout=60)

    def status(self, pid: int) -> dict:
        text = self.run("cat", f"/proc/{pid}/status").stdout
        return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)

    def stop(self) -> None:
        """Shut the container down; if it does not go in time, SIGKILL its
        init (which ends its whole PID namespace) and systemd-nspawn."""
        if self.proc.poll() is None:
            self.proc.terminate()          # nspawn shuts the container down
            try:
                self.proc.wait(timeout=self.STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                for pid in [self.init] if self.init else processes_in(self.root):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.kill()
                self.proc.wait(timeout=self.STOP_TIMEOUT_S)
        _wait(lambda: not processes_in(self.root), self.STOP_TIMEOUT_S,
              "the container's processes to exit",
              detail=lambda: f"left: {processes_in(self.root)}")


def test_container_that_never_boots_is_torn_down(root):
    """A boot that never completes (a unit that blocks multi-user.target)
    ends in a bounded time with an error, and leaves no process behind."""
    if not shutil.which("systemd-nspawn"):
        pytest.fail("systemd-nspawn missing (apt-get install systemd-container)")
    unit = root / "etc/systemd/system/fp-block-boot.service"
    unit.write_text("[Unit]\nDescription=never finishes\n[Service]\nType=oneshot\n"
                    "ExecStart=/bin/sleep 600\n[Install]\nWantedBy=multi-user.target\n")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / unit.name).symlink_to(f"/etc/systemd/system/{unit.name}")
    start = time.monotonic()
    with pytest.raises(AssertionError, match="the container to boot"):
        Container(root, boot_timeout_s=5)
    assert time.monotonic() - start < 5 + 30 + Container.STOP_TIMEOUT_S + 10
    assert processes_in(root) == []


def run_service(box: Container, cap_if: str, send_ns: str, tag: str, pcap: Path, truth) -> None:
    """In the booted container: start, check, reload, feed and stop the service."""
    sh(["ip", "-n", send_ns, "link", "set", cap_if, "netns", str(box.init)])
    box.run("systemctl", "start", "flowprobe")
    assert box.run("systemctl", "is-active", "flowprobe").stdout.strip() == "active"
    _wait(lambda: "1/1 readers running" in box.run(
        "systemctl", "show", "-p", "StatusText", "--value", "flowprobe").stdout,
        30, "STATUS=1/1 readers running")
    assert box.run("flowprobe", "nic", "check", cap_if).returncode == 0   # prepared
    main = int(box.run("systemctl", "show", "-p", "MainPID", "--value", "flowprobe").stdout)
    readers = [int(p) for p in box.run("cat", f"/proc/{main}/task/{main}/children")
               .stdout.split()]
    assert len(readers) == 1
    uid = box.run("id", "-u", "flowprobe").stdout.strip()
    for pid in [main, *readers]:
        st = box.status(pid)
        assert st["Uid"].split() == [uid] * 4
        assert int(st["CapEff"], 16) == int(st["CapPrm"], 16) == 0x3000   # RAW|ADMIN
        assert int(st["CapBnd"], 16) == 0x3000
        assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2"
    for pid in readers:
        assert int(box.status(pid)["CapAmb"], 16) == 0
    box.run("systemctl", "reload", "flowprobe")
    assert box.run("systemctl", "is-active", "flowprobe").stdout.strip() == "active"
    sent = json.loads(sh(["ip", "netns", "exec", send_ns, sys.executable,
                          str(REPO / "tools/sender.py"), f"fp{tag}s", str(pcap),
                          "--pps", "5000", "--max-seconds", "20"]).stdout)
    assert sent["sent"] == truth.frames
    time.sleep(0.5)
    box.run("systemctl", "stop", "flowprobe")
    log = box.run("journalctl", "-u", "flowprobe", "--no-pager", "-o", "cat").stdout
    assert "reader_reloaded" in log and f"{cap_if}: restored" in log
    assert box.run("flowprobe", "nic", "check", cap_if, check=False).returncode == 1


def in_chroot() -> bool:
    """Whether this process runs in a chroot: the mount it sees at / has
    its root in a subdirectory of its file system (/proc/self/mountinfo,
    field 4). A booted machine's / has /."""
    root_of_slash = "/"
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) > 4 and fields[4] == "/":
                    root_of_slash = fields[3]     # the last mount on / wins
    except OSError:
        return False
    return root_of_slash != "/"


def test_service_runs_hardened_under_systemd(root, deb, tmp_path):
    """The packaged unit under a real systemd: prepare_nic prepares the NIC
    as root, the readers run as flowprobe with exactly CAP_NET_RAW and
    CAP_NET_ADMIN under the seccomp filter, READY/STATUS reach systemd,
    reload and stop work, the flows sent are exported, the NIC is restored."""
    if not shutil.which("systemd-nspawn"):
        pytest.fail("systemd-nspawn missing (apt-get install systemd-container)")
    if in_chroot():
        pytest.skip("in a chroot, systemd-nspawn cannot boot a container (its systemd "
                    "stays offline): this test needs a booted machine, as CI's")
    install(root, deb)
    tag = os.urandom(4).hex()
    cap_if, send_ns = f"fp{tag}c", f"fp{tag}s"
    conf = root / CONFIG[1:]
    conf.write_text(conf.read_text()
                    .replace("  interface: null", f"  interface: {cap_if}")
                    .replace("  prepare_nic: false", "  prepare_nic: true")
                    .replace("  idle_timeout_s: 30.0", "  idle_timeout_s: 600")
                    .replace("  active_timeout_s: 120.0", "  active_timeout_s: 600")
                    # one reader, so one export file: flows.r0.ipfix
                    .replace("  workers: null", "  workers: 1")
                    .replace("export: []", "export:\n  - url: ipfix+file:///var/lib/flowprobe/"
                             "flows.ipfix\n    options_interval_s: 0"))
    pcap = tmp_path / "svc.pcap"
    truth = synth.generate(pcap, flows=50, packets=500, seed=11, mix={"fragmented": 0.0})
    try:
        sh(["ip", "netns", "add", send_ns])
        sh(["ip", "link", "add", cap_if, "netns", send_ns, "type", "veth",
            "peer", "name", f"fp{tag}s", "netns", send_ns])
        for ifc in (cap_if, f"fp{tag}s"):
            sh(["ip", "netns", "exec", send_ns, "sh", "-c",
                f"echo 1 > /proc/sys/net/ipv6/conf/{ifc}/disable_ipv6"])
        sh(["ip", "netns", "exec", send_ns, "ethtool", "-K", f"fp{tag}s", "tso", "off",
            "gso", "off", "tx", "off"])
        sh(["ip", "-n", send_ns, "link", "set", f"fp{tag}s", "up"])
        with Container(root) as box:
            run_service(box, cap_if, send_ns, tag, pcap, truth)
    finally:
        sh(["ip", "netns", "del", send_ns], check=False)
    out = sh([sys.executable, "-m", "flowprobe", "collect", "--file",
              str(root / "var/lib/flowprobe/flows.r0.ipfix"), "--format", "json"]).stdout
    records = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    records = [r for r in records if not r.get("_options")]
    assert synth.counts(records) == truth.counts()
