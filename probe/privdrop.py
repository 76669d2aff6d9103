"""Privilege drop: run as an unprivileged user keeping only some capabilities.

``flowprobe run --user NAME`` (without systemd; under systemd the unit's
User= and AmbientCapabilities= do the same) works in two steps:

1. ``drop_to_user(user, keep)`` in the supervisor, once its root-only
   set-up is done (stats socket under /run, metrics port, shared XDP
   programs): every capability not in ``keep`` leaves the bounding set
   (needs CAP_SETPCAP, so first), PR_SET_KEEPCAPS keeps the permitted set
   across the uid change, setgroups/setresgid/setresuid switch to the user
   for good (real, effective and saved ids), then capset leaves exactly
   ``keep`` permitted and effective. Readers forked from it inherit that.
2. ``restrict(keep)`` in each reader that is not root (after --user, or
   started by systemd as User=flowprobe with ambient capabilities): before
   the ring is opened it keeps what opening needs (``open_caps``); once the
   ring is open it narrows permitted and effective to what running needs
   (``RUN_CAPS``). Both times it clears the inheritable and ambient sets and
   sets PR_SET_NO_NEW_PRIVS, so nothing it could exec regains a capability.

Capabilities kept (``RUN_CAPS``):
- CAP_NET_RAW: opening AF_PACKET sockets. A reader the supervisor restarts
  (crash, stale heartbeat, rolling restart on SIGHUP) opens a new ring, and a
  filter reload compiles the expression on a libpcap live handle of the
  interface (driver/afpacket_filter.c: pcap_activate opens a packet socket).
- CAP_NET_ADMIN: interface-level operations of the capture path: the afxdp
  backend attaches and detaches its XDP program by netlink (a reader
  detaches it at exit, after the open-time caps are gone); it is the set the
  systemd unit grants, so both ways of running behave the same.
afxdp additionally needs CAP_BPF and CAP_PERFMON (loading the XDP program
and the XSKMAP) only while the XSK socket is created (``open_caps``);
readers drop them once it is open. (Not CAP_SYS_ADMIN: without a writable
bpffs libxdp falls back to a single program, see FIELD-NOTES.)

Done with ctypes on libc (prctl, capset): no extra dependency. The
``python-prctl`` package is a C extension last released in 2020 and
``prctl`` (2010) is unmaintained; ``pyprctl`` is ctypes too but small and
barely used. Thirty lines of ctypes are easier to audit than a dependency.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import pwd
from dataclasses import dataclass

from flowprobe.config import ConfigError
from flowprobe.errors import ExitCode, FlowprobeError

CAP_SETPCAP = 8
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

CAP_NAMES = {CAP_NET_ADMIN: "cap_net_admin", CAP_NET_RAW: "cap_net_raw",
             CAP_SYS_ADMIN: "cap_sys_admin", CAP_PERFMON: "cap_perfmon", CAP_BPF: "cap_bpf",
             CAP_SETPCAP: "cap_setpcap"}

RUN_CAPS = frozenset({CAP_NET_RAW, CAP_NET_ADMIN})
AFXDP_OPEN_CAPS = frozenset({CAP_BPF, CAP_PERFMON})

PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class PrivDropError(FlowprobeError):
    """A system call of the drop failed: the probe must not run half-dropped."""

    exit_code = ExitCode.CAPTURE_SETUP

    def __init__(self, errno_: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno_


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc = None


def _lib():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong,
                                ctypes.c_ulong, ctypes.c_ulong]
        _libc.capset.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]
        _libc.capget.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]
    return _libc


def _prctl(option: int, arg2: int = 0, arg3: int = 0, what: str = "prctl") -> int:
    rc = _lib().prctl(option, arg2, arg3, 0, 0)
    if rc < 0:
        err = ctypes.get_errno()
        raise PrivDropError(err, f"{what}: {os.strerror(err)}")
    return rc


def _mask(caps) -> tuple[int, int]:
    bits = 0
    for c in caps:
        bits |= 1 << c
    return bits & 0xFFFFFFFF, bits >> 32


def capget() -> dict[str, int]:
    """This process's capability sets as 64-bit masks."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _lib().capget(ctypes.byref(hdr), data) < 0:
        err = ctypes.get_errno()
        raise PrivDropError(err, f"capget: {os.strerror(err)}")
    return {name: getattr(data[0], name) | (getattr(data[1], name) << 32)
            for name in ("effective", "permitted", "inheritable")}


def capset(permitted, effective=None, inheritable=()) -> None:
    """Set the three sets (each an iterable of capability numbers)."""
    effective = permitted if effective is None else effective
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for name, caps in (("permitted", permitted), ("effective", effective),
                       ("inheritable", inheritable)):
        lo, hi = _mask(caps)
        setattr(data[0], name, lo)
        setattr(data[1], name, hi)
    if _lib().capset(ctypes.byref(hdr), data) < 0:
        err = ctypes.get_errno()
        raise PrivDropError(err, f"capset: {os.strerror(err)}")


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 40


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


def lookup(user: str) -> Account:
    """The user's uid and primary gid; ConfigError if there is no such user."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError([f"--user: no such user {user!r}"]) from None
    return Account(user, pw.pw_uid, pw.pw_gid)


def open_caps(backend: str) -> frozenset[int]:
    """What a reader needs while it opens its ring."""
    return RUN_CAPS | (AFXDP_OPEN_CAPS if backend == "afxdp" else frozenset())


def drop_to_user(account: Account, keep) -> None:
    """Become ``account`` for good, keeping exactly ``keep`` (permitted, effective).

    Must run as root (uid 0 with CAP_SETUID, CAP_SETGID, CAP_SETPCAP)."""
    keep = frozenset(keep)
    for cap in range(last_cap() + 1):
        if cap not in keep and _lib().prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1:
            _prctl(PR_CAPBSET_DROP, cap, what=f"PR_CAPBSET_DROP {cap}")
    _prctl(PR_SET_KEEPCAPS, 1, what="PR_SET_KEEPCAPS")
    try:
        try:
            os.setgroups([account.gid])
            os.setresgid(account.gid, account.gid, account.gid)
            os.setresuid(account.uid, account.uid, account.uid)
        except OSError as exc:
            raise PrivDropError(exc.errno, f"--user {account.name}: {exc.strerror}") from None
    finally:
        _prctl(PR_SET_KEEPCAPS, 0, what="PR_SET_KEEPCAPS")
    if account.uid != 0 and (os.getuid(), os.geteuid()) != (account.uid, account.uid):
        raise PrivDropError(0, f"--user {account.name}: uid did not change")
    capset(permitted=keep, effective=keep, inheritable=())
    _clear_ambient()
    _prctl(PR_SET_NO_NEW_PRIVS, 1, what="PR_SET_NO_NEW_PRIVS")


def restrict(keep, effective=None) -> None:
    """Narrow this process to ``keep`` (permitted), ``effective`` (default:
    all of ``keep``), no inheritable or ambient capabilities, no new
    privileges. Capabilities can only shrink here, never grow."""
    keep = frozenset(keep)
    have = capget()["permitted"]
    keep = frozenset(c for c in keep if have >> c & 1)
    effective = keep if effective is None else frozenset(effective) & keep
    try:
        capset(permitted=keep, effective=effective, inheritable=())
    except PrivDropError as exc:
        # the systemd unit's seccomp filter denies capset (EPERM): fine when
        # there is nothing to narrow (the unit already granted exactly this)
        now = capget()
        if exc.errno != errno.EPERM or (now["permitted"], now["effective"]) != (
                sum(1 << c for c in keep), sum(1 << c for c in effective)):
            raise
    _clear_ambient()
    _prctl(PR_SET_NO_NEW_PRIVS, 1, what="PR_SET_NO_NEW_PRIVS")


def _clear_ambient() -> None:
    try:
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, what="PR_CAP_AMBIENT")
    except PrivDropError:
        pass   # kernels before 4.3 have no ambient set


def chown_path(path: str, account: Account) -> None:
    """Give ``path`` (the stats socket) to the user's group, best effort."""
    try:
        os.chown(path, account.uid, account.gid)
    except OSError:
        pass


def status_caps(pid: int | str = "self") -> dict[str, int]:
    """CapEff/CapPrm/CapInh/CapBnd/CapAmb of /proc/PID/status as ints."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("Cap"):
                key, _, value = line.partition(":")
                out[key] = int(value.strip(), 16)
    return out


__all__ = ["Account", "CAP_NET_ADMIN", "CAP_NET_RAW", "PrivDropError", "RUN_CAPS",
           "capget", "capset", "drop_to_user", "lookup", "open_caps", "restrict",
           "status_caps"]
