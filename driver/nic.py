"""Capture-only NIC: ``flowprobe nic prepare|check|restore IFACE``.

prepare makes the interface receive-only and records every change in
/run/flowprobe/IFACE.json so restore puts exactly that back:

  egress blocked   clsact qdisc + a direct-action cls_bpf filter on egress
                   whose eBPF program returns TC_ACT_SHOT, so that it also
                   works on kernels built without cls_matchall / act_gact
                   (and without loadable modules). pyroute2 0.9 cannot send
                   a classic cls_bpf program (TCA_BPF_OPS is a u32 there),
                   so the 2-instruction eBPF program is loaded with bpf(2)
                   and attached by fd through netlink. Packets sent with
                   PACKET_QDISC_BYPASS or an AF_XDP TX ring skip tc egress:
                   flowprobe never does that.
  IPv6 disabled    /proc/sys/net/ipv6/conf/IFACE/disable_ipv6 (no netlink
                   equivalent), which also removes the IPv6 addresses
  no addresses     IPv4/IPv6 addresses deleted (netlink)
  ARP off, promiscuous, link up   link flags IFF_NOARP/IFF_PROMISC/IFF_UP
  offloads off     GRO/LRO/GSO/TSO and rx/tx checksum through the
                   SIOCETHTOOL ioctl (pyroute2.ethtool; ethtool netlink is
                   not needed for features)

Everything runs in the caller's network namespace.
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import struct
import sys
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.ethtool import Ethtool
from pyroute2.netlink.exceptions import NetlinkError

from flowprobe.errors import ExitCode
from flowprobe.driver.afxdp import xdp_status

STATE_DIR = Path("/run/flowprobe")
IFF_UP, IFF_PROMISC, IFF_NOARP = 0x1, 0x100, 0x80
LINK_FLAGS = {"up": IFF_UP, "promisc": IFF_PROMISC, "noarp": IFF_NOARP}
WANTED_FLAGS = {"up": True, "promisc": True, "noarp": True}
TC_H_CLSACT_EGRESS = 0xFFFFFFF3
EGRESS_PRIO, EGRESS_HANDLE = 1, 0xF10
EGRESS_PROG_NAME = "fp_egress_drop"
OFFLOADS = (  # ethtool feature names turned off (where the device has them)
    "rx-gro", "rx-lro", "rx-gro-hw", "rx-gro-list", "rx-udp-gro-forwarding",
    "tx-generic-segmentation", "tx-tcp-segmentation", "tx-tcp6-segmentation",
    "tx-tcp-ecn-segmentation", "tx-tcp-mangleid-segmentation",
    "tx-udp-segmentation", "tx-gso-list", "rx-checksum", "tx-checksum-ipv4",
    "tx-checksum-ipv6", "tx-checksum-ip-generic", "tx-checksum-sctp",
)
EXIT_READY = ExitCode.OK
EXIT_NOT_READY = 1            # check: some property is not as capture needs
EXIT_FAILED = ExitCode.CAPTURE_SETUP


class NicError(OSError):
    """A NIC operation failed; carries the interface."""


# ------------------------------------------------------------------ egress

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "i686": 357, "armv7l": 386}
_BPF_PROG_LOAD = 5
_BPF_PROG_TYPE_SCHED_CLS = 3
_TC_ACT_SHOT = 2


def _load_drop_program() -> int:
    """bpf(BPF_PROG_LOAD) of ``r0 = TC_ACT_SHOT; exit``; returns the fd."""
    insns = ctypes.create_string_buffer(
        struct.pack("<BBhi", 0xB7, 0, 0, _TC_ACT_SHOT)      # mov64 r0, 2
        + struct.pack("<BBhi", 0x95, 0, 0, 0), 16)          # exit
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQ", attr, 0, _BPF_PROG_TYPE_SCHED_CLS, 2,
                     ctypes.addressof(insns), ctypes.addressof(license_))
    struct.pack_into("16s", attr, 48, EGRESS_PROG_NAME.encode())
    libc = ctypes.CDLL(None, use_errno=True)
    nr = _SYS_BPF.get(os.uname().machine)
    if nr is None:
        raise NicError(errno.ENOSYS, f"bpf(2) number unknown on {os.uname().machine}")
    fd = libc.syscall(nr, _BPF_PROG_LOAD, attr, 128)
    if fd < 0:
        err = ctypes.get_errno()
        raise NicError(err, f"bpf(BPF_PROG_LOAD): {os.strerror(err)}")
    return fd


def _egress_filters(ipr: IPRoute, index: int) -> list:
    try:
        return [m for m in ipr.get_filters(index=index, parent=TC_H_CLSACT_EGRESS)
                if m.get_attr("TCA_KIND") == "bpf"]
    except NetlinkError:
        return []


def _has_clsact(ipr: IPRoute, index: int) -> bool:
    return any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=index))


def _egress_blocked(ipr: IPRoute, index: int) -> bool:
    for m in _egress_filters(ipr, index):
        opts = m.get_attr("TCA_OPTIONS")
        name = opts.get_attr("TCA_BPF_NAME") if opts else None
        if name and name.startswith(EGRESS_PROG_NAME):
            return True
    return False


# ------------------------------------------------------------------ reading

def _link(ipr: IPRoute, iface: str):
    idx = ipr.link_lookup(ifname=iface)
    if not idx:
        raise NicError(errno.ENODEV, "no such interface")
    return ipr.get_links(idx[0])[0]


def _addresses(ipr: IPRoute, index: int) -> list[dict]:
    out = []
    for a in ipr.get_addr(index=index):
        out.append({"family": a["family"], "address": a.get_attr("IFA_ADDRESS"),
                    "local": a.get_attr("IFA_LOCAL"), "prefixlen": a["prefixlen"],
                    "scope": a["scope"], "broadcast": a.get_attr("IFA_BROADCAST"),
                    "label": a.get_attr("IFA_LABEL")})
    return out


def _ipv6_path(iface: str) -> Path:
    return Path(f"/proc/sys/net/ipv6/conf/{iface}/disable_ipv6")


def _ipv6_disabled(iface: str) -> bool | None:
    p = _ipv6_path(iface)
    return p.read_text().strip() == "1" if p.exists() else None


def _features(iface: str) -> dict[str, tuple[bool, bool]]:
    """{name: (enabled, changeable)} for OFFLOADS the device has."""
    feats = Ethtool().get_features(iface).features
    return {n: (bool(feats[n].enable), bool(feats[n].available))
            for n in OFFLOADS if n in feats}


def _set_features(iface: str, names: list[str], enable: bool) -> None:
    if not names:
        return
    eth = Ethtool()
    feats = eth.get_features(iface)
    for n in names:
        feats.features[n].enable = enable
    eth.set_features(iface, feats)


def _tx_packets(link) -> int:
    return link.get_attr("IFLA_STATS64")["tx_packets"]


# ------------------------------------------------------------------ state

def state_path(iface: str) -> Path:
    return STATE_DIR / f"{iface}.json"


def _write_state(iface: str, state: dict) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = state_path(iface).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, state_path(iface))


# ------------------------------------------------------------------ actions

def prepare(iface: str) -> dict:
    """Make IFACE capture-only; returns the recorded prior state.

    Re-running prepare keeps the first recorded state (what restore returns
    to) and adds only what it changed this time.
    """
    path = state_path(iface)
    with IPRoute() as ipr:
        link = _link(ipr, iface)
        index = link["index"]
        state = json.loads(path.read_text()) if path.exists() else {}
        if state.get("ifindex") != index:   # none yet, or a stale file
            state = {"iface": iface, "ifindex": index, "flags": {}, "addresses": [],
                     "disable_ipv6": None, "features_disabled": [],
                     "clsact_added": False, "egress_filter": False}
        # 1. egress first: nothing can leave while the rest changes
        if not _egress_blocked(ipr, index):
            if not _has_clsact(ipr, index):
                ipr.tc("add", "clsact", index=index)
                state["clsact_added"] = True
                _write_state(iface, state)
            fd = _load_drop_program()
            try:
                ipr.tc("add-filter", "bpf", index=index, parent=TC_H_CLSACT_EGRESS,
                       prio=EGRESS_PRIO, handle=EGRESS_HANDLE, fd=fd,
                       name=EGRESS_PROG_NAME, direct_action=True)
            finally:
                os.close(fd)
            state["egress_filter"] = True
        _write_state(iface, state)
        # 2. addresses (recorded before IPv6 goes, which drops v6 addresses)
        addrs = _addresses(ipr, index)
        for a in addrs:
            if a not in state["addresses"]:
                state["addresses"].append(a)
        _write_state(iface, state)
        # 3. IPv6 off
        if _ipv6_disabled(iface) is False:
            if state["disable_ipv6"] is None:
                state["disable_ipv6"] = "0"
            _write_state(iface, state)
            _ipv6_path(iface).write_text("1\n")
        for a in _addresses(ipr, index):
            ipr.addr("del", index=index, address=a["local"] or a["address"],
                     prefixlen=a["prefixlen"], family=a["family"])
        # 4. offloads
        feats = _features(iface)
        off = [n for n, (on, changeable) in feats.items() if on and changeable]
        state["features_disabled"] = sorted(set(state["features_disabled"]) | set(off))
        _write_state(iface, state)
        _set_features(iface, off, False)
        # 5. link flags: ARP off, promiscuous, up
        flags = link["flags"]
        for name, bit in LINK_FLAGS.items():
            state["flags"].setdefault(name, bool(flags & bit))
        _write_state(iface, state)
        mask = IFF_UP | IFF_PROMISC | IFF_NOARP
        ipr.link("set", index=index, flags=mask, change=mask)
    return state


def check(iface: str) -> tuple[bool, list[tuple[str, bool, str]], int]:
    """Returns (ready, [(property, ok, detail)], tx_packets)."""
    rows = []
    with IPRoute() as ipr:
        link = _link(ipr, iface)
        index = link["index"]
        for name, bit in LINK_FLAGS.items():
            rows.append((name, bool(link["flags"] & bit) == WANTED_FLAGS[name], ""))
        addrs = _addresses(ipr, index)
        v4 = [a["address"] for a in addrs if a["family"] == 2]
        v6 = [a["address"] for a in addrs if a["family"] == 10]
        rows.append(("no_ipv4_addresses", not v4, " ".join(v4)))
        rows.append(("no_ipv6_addresses", not v6, " ".join(v6)))
        dis = _ipv6_disabled(iface)
        rows.append(("ipv6_disabled", dis is not False, "" if dis is not None
                     else "no IPv6 on this host"))
        for n, (on, _) in _features(iface).items():
            rows.append((f"offload_off:{n}", not on, ""))
        rows.append(("egress_blocked", _egress_blocked(ipr, index),
                     "clsact egress bpf drop"))
        tx = _tx_packets(link)
    return all(ok for _, ok, _ in rows), rows, tx


def restore(iface: str) -> dict:
    """Put back what prepare recorded, then delete the state file."""
    path = state_path(iface)
    if not path.exists():
        raise NicError(errno.ENOENT, f"no recorded state at {path} (run prepare first)")
    state = json.loads(path.read_text())
    with IPRoute() as ipr:
        index = _link(ipr, iface)["index"]
        mask = 0
        value = 0
        for name, was in state["flags"].items():
            bit = LINK_FLAGS[name]
            mask |= bit
            value |= bit if was else 0
        # flags other than up first; the link goes down (if it was) last
        if mask & ~IFF_UP:
            ipr.link("set", index=index, flags=value & ~IFF_UP, change=mask & ~IFF_UP)
        _set_features(iface, state["features_disabled"], True)
        if state["disable_ipv6"] is not None:
            _ipv6_path(iface).write_text(state["disable_ipv6"] + "\n")
        if mask & IFF_UP and value & IFF_UP:
            ipr.link("set", index=index, flags=IFF_UP, change=IFF_UP)
        for a in state["addresses"]:
            kw = {"index": index, "address": a["local"] or a["address"],
                  "prefixlen": a["prefixlen"], "family": a["family"]}
            if a["family"] == 2 and a["broadcast"]:
                kw["broadcast"] = a["broadcast"]
            if a["family"] == 2 and a["label"]:
                kw["label"] = a["label"]
            try:
                ipr.addr("add", **kw)
            except NetlinkError as e:   # IPv6 link-local comes back by itself
                if e.code != errno.EEXIST:
                    raise
        if state["egress_filter"]:
            ipr.tc("del-filter", "bpf", index=index, parent=TC_H_CLSACT_EGRESS,
                   prio=EGRESS_PRIO, handle=EGRESS_HANDLE)
        if state["clsact_added"]:
            ipr.tc("del", "clsact", index=index)
        if mask & IFF_UP and not value & IFF_UP:
            ipr.link("set", index=index, flags=0, change=IFF_UP)
    path.unlink()
    return state


# ------------------------------------------------------------------ CLI

def cmd_prepare(args: argparse.Namespace) -> int:
    prepare(args.iface)
    return cmd_check(args)


def cmd_check(args: argparse.Namespace) -> int:
    ready, rows, tx = check(args.iface)
    for name, ok, detail in rows:
        line = f"{'ok    ' if ok else 'NOT OK'}  {name}"
        print(f"{line}  {detail}" if detail else line)
    print(f"tx_packets {tx}")
    print(f"xdp {xdp_status(args.iface)}")   # informational: AF_XDP program
    print(f"{args.iface}: {'ready for capture' if ready else 'NOT ready for capture'}")
    return EXIT_READY if ready else EXIT_NOT_READY


def cmd_restore(args: argparse.Namespace) -> int:
    restore(args.iface)
    print(f"{args.iface}: restored")
    return EXIT_READY


def _run(handler):
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (OSError, NetlinkError) as e:
            print(f"flowprobe nic: {args.iface}: {e.strerror or e}", file=sys.stderr)
            return EXIT_FAILED
    return run


def add_parser(subparsers) -> None:
    """Subcommand builder for probe/cli.py (sets ``handler``)."""
    p = subparsers.add_parser("nic", help="make an interface capture-only")
    _add_actions(p.add_subparsers(dest="nic_cmd", metavar="ACTION", required=True))


def _add_actions(sub) -> None:
    for name, handler, text in (
            ("prepare", cmd_prepare, "make IFACE receive-only, record the changes"),
            ("check", cmd_check, "report each capture-only property"),
            ("restore", cmd_restore, "put back what prepare changed")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("iface", metavar="IFACE")
        sp.set_defaults(handler=_run(handler))


def main(argv=None) -> int:
    """``python -m flowprobe.driver.nic prepare|check|restore IFACE``."""
    parser = argparse.ArgumentParser(prog="flowprobe nic")
    _add_actions(parser.add_subparsers(dest="nic_cmd", metavar="ACTION", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
