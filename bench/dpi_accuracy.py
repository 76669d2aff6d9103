"""``make bench-dpi``: flowprobe's application labels against ndpiReader 4.2's.

For every capture of $FLOWPROBE_CORPUS/ndpi-sample/ (or the files given on
the command line) this runs, on the same file:

  ndpiReader  -q -v 2 -i FILE -w OUT  (Debian libndpi-bin 4.2, the reference):
              one line per flow, "PROTO a:p <-> b:p [proto: M.A/Master.App]
              [Confidence: ...]"
  flowprobe   replay FILE --json, with every expiry timer (idle, active, TCP
              end grace) set far beyond any capture's length, so that as in
              ndpiReader, which expires nothing while reading a file, one
              conversation is one flow from its first packet to the end

and keys both by 5-tuple, bidirectionally: ndpiReader's flow is a
conversation; flowprobe emits one record per direction (and more if a
conversation is split), and every record of a conversation must carry the
conversation's label. Only flows that ndpiReader classifies (label not
"Unknown") are compared; a flow is "same" when flowprobe has at least one
record of it and every such record carries exactly ndpiReader's label.

Every difference gets a reason category (see REASONS) and a detail line.
The packet-limit category comes from a second ndpiReader run with its packet
limits (-T/-U) lowered to flowprobe's DPI packet limit (--packet-limit).

How ndpiReader 4.2 handles flows (example/reader_util.c, ndpiReader.c),
which is what flowprobe is compared to:
- one flow per (VLAN id, IP protocol, address/port pair in either order);
  its "src" is the sender of the first packet;
- no flow expires while a file is read (the idle scan runs on live capture
  only); flows are never split by FIN/RST;
- DPI runs until nDPI classifies the flow (then on while
  ndpi_extra_dissection_possible, e.g. to see the TLS certificate) or until
  more than 80 TCP / 24 UDP packets (both directions) were processed; then,
  and at the end of the file for every flow still undecided,
  ndpi_detection_giveup guesses (by port, by IP) unless -d;
- IP-in-IP and IPv6-in-IP (protocols 4, 41) are decapsulated: the inner
  flow is classified; GTP/TZSP/CAPWAP only with -t (not used here);
  VXLAN is never decapsulated; non-first IPv4 fragments are dropped;
- non-TCP/UDP flows have ports 0; IPv6 addresses are printed by inet_ntop
  and then "patched" (every ":0:" becomes "::", ndpi_patchIPv6Address).

Without FLOWPROBE_CORPUS (and no FILE argument) this prints one line saying
how to set it and exits 0. Results also go to bench/out/dpi_accuracy.json.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"

CORPUS_ENV = "FLOWPROBE_CORPUS"
CORPUS_SUB = "ndpi-sample"
GOAL = 0.99
NDPIREADER = "ndpiReader"
#: Far beyond any capture's length: flowprobe then expires nothing before
#: the end of the file, as ndpiReader does not.
LONG_TIMEOUT_S = 10_000_000

#: Reason categories of a difference, in the order they are tried.
REASONS = {
    "tunnel": "ndpiReader decapsulates IP-in-IP/IPv6-in-IP and labels the inner "
              "flow; flowprobe keys (and labels) the outer header",
    "non-ip": "ndpiReader 4.2 reads frames as IP whatever their EtherType (when the "
              "bytes look like an IP header); flowprobe skips non-IP EtherTypes "
              "(the flow vanishes from ndpiReader under the filter IP_ETHERTYPES)",
    "no-record": "flowprobe has no record with this 5-tuple",
    "not-inspected": "flowprobe does not run DPI on this IP protocol (only TCP/UDP/ICMP)",
    "no-label": "flowprobe's records carry no application (DPI off, engine "
                "without DPI, or no DPI state for the flow)",
    "tos": "the records of one conversation have different ToS and disagree: "
           "flowprobe keys flows by ToS, so its DPI took them for separate conversations",
    "split": "the conversation is split into several records in one direction "
             "(timeouts, TCP end, table full) and they disagree",
    "direction": "the two directions of one conversation carry different labels "
                 "(direction state not shared)",
    "packet-limit": "ndpiReader with its packet limit lowered to flowprobe's "
                    "gives flowprobe's label",
    "guess": "ndpiReader's label is its own giveup guess (by port/IP, not DPI), "
             "and flowprobe's differs",
    "refinement": "same master or app protocol, one label more specific "
                  "(nDPI refined it after the first classification)",
    "naming": "same nDPI protocol ids, different label text",
    "unexplained": "none of the above",
}

# ----------------------------------------------------------------- reference

#: A BPF filter for frames whose EtherType flowprobe parses as IP (directly or
#: behind VLAN tags, MPLS labels or PPPoE); spelt with "ether proto" only, as
#: libpcap's vlan/mpls keywords shift the offsets of what follows them.
IP_ETHERTYPES = " or ".join(f"ether proto 0x{t:04x}" for t in (
    0x0800, 0x86dd, 0x8100, 0x88a8, 0x9100, 0x8847, 0x8848, 0x8864))

_IP_PROTOS = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMPV6": 58, "VRRP": 112, "IGMP": 2}

_FLOW_LINE = re.compile(
    r"^\t(?P<n>\d+)\t(?P<proto>\S+) "
    r"(?P<src>\[[^\]]*\]|[^\s\[]+):(?P<sport>\d+) (?P<dir><->|->) "
    r"(?P<dst>\[[^\]]*\]|[^\s\[]+):(?P<dport>\d+) "
    r"(?:\[VLAN: (?P<vlan>\d+)\])?(?:\[flowId: \d+\])?"
    r"\[proto: (?:(?P<tunnel>[A-Za-z0-9_]+):)?(?P<ids>[\d.]+)/(?P<label>[^\]]+)\]")
_CONFIDENCE = re.compile(r"\[Confidence: (?P<c>[^\]]+)\]")
_PACKETS = re.compile(r"\[(?P<a>\d+) pkts/\d+ bytes (?:<->|->) (?P<b>\d+) pkts/\d+ bytes\]")


@dataclasses.dataclass(frozen=True)
class RefFlow:
    """One flow as ndpiReader printed it."""
    proto: int
    src: str            # ndpiReader's spelling (IPv6 patched, no brackets)
    sport: int
    dst: str
    dport: int
    vlan: int
    label: str          # "Master.App" (ndpi_protocol2name)
    ids: str            # "91.126" (ndpi_protocol2id)
    confidence: str     # "DPI", "Match by port", ...
    packets: int

    @property
    def key(self) -> tuple:
        return conversation_key(self.proto, self.src, self.sport, self.dst, self.dport)

    @property
    def classified(self) -> bool:
        return self.label != "Unknown"

    def tuple_text(self) -> str:
        return f"{proto_name(self.proto)} {hostport(self.src, self.sport)} <-> {hostport(self.dst, self.dport)}" + (
            f" vlan {self.vlan}" if self.vlan else "")


def parse_reference(text: str) -> list[RefFlow]:
    """Every flow line of ndpiReader's -v 2 output (detected, guessed and
    undetected sections alike)."""
    flows = []
    for line in text.splitlines():
        m = _FLOW_LINE.match(line)
        if not m:
            continue
        proto = m["proto"]
        c = _CONFIDENCE.search(line)
        p = _PACKETS.search(line)
        flows.append(RefFlow(
            proto=_IP_PROTOS[proto] if proto in _IP_PROTOS else int(proto),
            src=m["src"].strip("[]"), sport=int(m["sport"]),
            dst=m["dst"].strip("[]"), dport=int(m["dport"]),
            vlan=int(m["vlan"] or 0), label=m["label"], ids=m["ids"],
            confidence=c["c"] if c else "",
            packets=int(p["a"]) + int(p["b"]) if p else 0))
    return flows


def run_reference(path: Path, packet_limit: int | None = None,
                  bpf: str | None = None) -> list[RefFlow]:
    """ndpiReader's flows for `path`; with packet_limit, its TCP and UDP DPI
    packet limits (-T/-U) set to it; with bpf, on the packets it matches."""
    with tempfile.TemporaryDirectory(prefix="dpi-acc-") as tmp:
        out = Path(tmp) / "flows.txt"
        cmd = [NDPIREADER, "-q", "-v", "2", "-i", str(path), "-w", str(out)]
        if packet_limit is not None:
            cmd += reference_limit_args(packet_limit)
        if bpf is not None:
            cmd += ["-f", bpf]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        # ndpiReader exits 0 after a filter that does not compile, unfiltered
        if p.returncode != 0 or not out.exists() or "pcap_compile error" in p.stdout:
            raise RuntimeError(f"exit {p.returncode}: {' '.join(cmd)}\n"
                               f"{(p.stdout + p.stderr)[-2000:]}")
        return parse_reference(out.read_text(errors="replace"))


def engine_packet_limit() -> int | None:
    """FT_DPI_MAX_PACKETS of this tree's engine (probe/flowtable/dpi.c): the
    packets of a conversation flowprobe gives nDPI at most; None without it."""
    try:
        m = re.search(r"#define\s+FT_DPI_MAX_PACKETS\s+(\d+)",
                      (ROOT / "probe" / "flowtable" / "dpi.c").read_text())
    except OSError:
        return None
    return int(m[1]) if m else None


def reference_limit_args(packet_limit: int) -> list[str]:
    """ndpiReader options that make it inspect `packet_limit` packets of a
    flow at most, as flowprobe does: it processes the packet that takes its
    count past -T/-U and then gives up, so one less (its minimum is 3)."""
    n = str(max(3, packet_limit - 1))
    return ["-T", n, "-U", n]


# ----------------------------------------------------------------- flowprobe

def ndpi_ipv6_text(addr: str) -> str:
    """An IPv6 address as ndpiReader 4.2 prints it: glibc inet_ntop, then
    ndpi_patchIPv6Address (every ":0:" becomes "::", scanning left to
    right, so the result may not even parse)."""
    a = ipaddress.IPv6Address(addr)
    words = [int.from_bytes(a.packed[i:i + 2], "big") for i in range(0, 16, 2)]
    if words[:5] == [0] * 5 and (words[5] == 0xffff or (words[5] == 0 and words[6] != 0)):
        # inet_ntop's embedded IPv4 forms: ::ffff:a.b.c.d and ::a.b.c.d
        text = ("::ffff:" if words[5] else "::") + str(ipaddress.IPv4Address(a.packed[12:]))
    else:
        text = a.compressed
    out, i = [], 0
    while i < len(text):
        if text[i] == ":" and text[i + 1:i + 2] == "0" and text[i + 2:i + 3] == ":":
            out.append("::")
            i += 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def conversation_key(proto: int, a: str, ap: int, b: str, bp: int) -> tuple:
    """Both directions of a conversation give one key (ports 0 but for
    TCP/UDP, as ndpiReader keys them)."""
    if proto not in (6, 17):
        ap = bp = 0
    return (proto,) + tuple(sorted([(a, ap), (b, bp)]))


def record_endpoints(rec: dict) -> tuple[str, int, str, int]:
    if "sourceIPv4Address" in rec:
        src, dst = rec["sourceIPv4Address"], rec["destinationIPv4Address"]
    else:
        src = ndpi_ipv6_text(rec["sourceIPv6Address"])
        dst = ndpi_ipv6_text(rec["destinationIPv6Address"])
    return src, rec.get("sourceTransportPort", 0), dst, rec.get("destinationTransportPort", 0)


def record_key(rec: dict) -> tuple:
    src, sp, dst, dp = record_endpoints(rec)
    return conversation_key(rec["protocolIdentifier"], src, sp, dst, dp)


def record_vlan(rec: dict) -> int:
    """The VLAN id ndpiReader would key this record's packets by: the last
    tag it parsed (the inner one of QinQ)."""
    return rec.get("dot1qCustomerVlanId") or rec.get("vlanId") or 0


def record_label(rec: dict) -> str | None:
    return rec.get("applicationName")


def flowprobe_exe() -> str:
    exe = Path(sys.executable).parent / "flowprobe"
    return str(exe) if exe.exists() else shutil.which("flowprobe") or "flowprobe"


def run_flowprobe(path: Path, long_timers: bool = True) -> tuple[list[dict], dict]:
    """flowprobe's records (replay --json) for `path`, with expiry timers
    far beyond the capture's length (or its defaults), and its counts of
    skipped packets by reason (from the replay summary)."""
    with tempfile.TemporaryDirectory(prefix="dpi-acc-") as tmp:
        cfg = Path(tmp) / "flowprobe.yaml"
        timers = (f"  idle_timeout_s: {LONG_TIMEOUT_S}\n"
                  f"  active_timeout_s: {LONG_TIMEOUT_S}\n"
                  f"  tcp_end_grace_s: {LONG_TIMEOUT_S}\n") if long_timers else ""
        cfg.write_text("flow:\n  max_flows: 1048576\n" + timers)
        cmd = [flowprobe_exe(), "replay", "-c", str(cfg), str(path), "--json"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"exit {p.returncode}: {' '.join(cmd)}\n{p.stderr[-2000:]}")
    records = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    skipped = {m[1]: int(m[2].replace(",", ""))
               for m in re.finditer(r"^\s*skipped (\S+)\s+([\d,]+)$", p.stderr, re.M)}
    return records, skipped


def run_flowprobe_in_process(path: Path, long_timers: bool = True) -> tuple[list[dict], dict]:
    """The same records through the engine's Python binding (FlowTable,
    iter_records: record_to_dict) in this process, not replay --json: it
    checks the engine when the JSON lines formatter lags behind it."""
    import dataclasses as dc

    from flowprobe.config import default_config
    from flowprobe.probe.flowtable.table import FlowTable, iter_records
    from flowprobe.probe.replay import replay_files

    kw: dict = {"max_flows": 1048576}
    if long_timers:
        kw.update(idle_timeout_s=LONG_TIMEOUT_S, active_timeout_s=LONG_TIMEOUT_S,
                  tcp_end_grace_s=LONG_TIMEOUT_S)
    cfg = default_config()
    out: list[dict] = []
    table = FlowTable(dc.replace(cfg.flow, **kw), lambda recs, n: out.extend(iter_records(recs, n)))
    try:
        replay_files([str(path)], table, cfg.replay.batch_packets)
        table.flush()
        skipped = dict(table.stats().get("skipped", {}))
    finally:
        close = getattr(table, "close", None)
        if close:
            close()
    return out, skipped


def engine_has_dpi() -> bool:
    """Whether this install's flow engine has a DPI stage (an nDPI symbol in
    its C binding)."""
    try:
        from flowprobe.probe.flowtable import table
    except ImportError:
        return False
    return any("dpi" in name for name in dir(table.lib))


# ------------------------------------------------------------------ compare

@dataclasses.dataclass
class Difference:
    file: str
    flow: str                  # ndpiReader's 5-tuple, as text
    reference: str             # ndpiReader's label
    confidence: str            # ndpiReader's confidence
    flowprobe: list            # flowprobe's labels, one per record (None: no label)
    reason: str                # a key of REASONS
    detail: str


@dataclasses.dataclass
class FileResult:
    file: str
    flows: int = 0             # every flow ndpiReader printed
    compared: int = 0          # the ones it classified
    same: int = 0
    differences: list = dataclasses.field(default_factory=list)
    probe_records: int = 0
    labelled_records: int = 0

    @property
    def different(self) -> int:
        return len(self.differences)


def _components(label: str | None) -> set:
    return set(label.split(".")) if label else set()


def classify(ref: RefFlow, recs: list[dict], limited: RefFlow | None,
             tunnelled: bool, skipped: dict | None = None,
             ip_only: RefFlow | None = None) -> tuple[str, str]:
    """The reason category and a detail line for a flow whose labels differ.
    limited: the flow in ndpiReader's run at flowprobe's packet limit;
    ip_only: the flow in ndpiReader's run on IP EtherTypes only."""
    if not recs and ip_only is None and ref.packets:
        return "non-ip", ("gone from ndpiReader on IP EtherTypes only (-f IP_ETHERTYPES); "
                          f"flowprobe skipped non_ip {(skipped or {}).get('non_ip', 0)} in this file")
    if not recs:
        if tunnelled:
            return "tunnel", "flowprobe records this file's IP-in-IP/6in6 packets under the outer header"
        why = ", ".join(f"{k} {v}" for k, v in sorted((skipped or {}).items()))
        return "no-record", "no flowprobe record with this 5-tuple" + (
            f" (packets flowprobe skipped in this file: {why})" if why else "")
    labels = [record_label(r) for r in recs]
    if all(lb is None for lb in labels):
        if ref.proto not in (1, 6, 17, 58):
            return "not-inspected", f"IP protocol {ref.proto}: flowprobe records carry no application"
        return "no-label", f"{len(recs)} record(s), none with applicationName"
    by_dir = collections.defaultdict(list)
    for r in sorted(recs, key=lambda r: r.get("flowStartMilliseconds", 0)):
        s, sp, d, dp = record_endpoints(r)
        by_dir[(s, sp, d, dp)].append(r)
    if len(set(labels)) > 1:
        if len({r.get("ipClassOfService", 0) for r in recs}) > 1:
            parts = [f"{hostport(s, sp)}->{hostport(d, dp)}: " + ", ".join(
                f"tos {r.get('ipClassOfService', 0)} {record_label(r)}" for r in rs)
                for (s, sp, d, dp), rs in by_dir.items()]
            return "tos", "; ".join(parts)
        if any(len(rs) > 1 for rs in by_dir.values()):
            parts = [f"{hostport(s, sp)}->{hostport(d, dp)}: " + ", ".join(
                f"{record_label(r)} (end {r.get('flowEndReason')})" for r in rs)
                for (s, sp, d, dp), rs in by_dir.items()]
            return "split", "; ".join(parts)
        parts = [f"{hostport(s, sp)}->{hostport(d, dp)}: {record_label(rs[0])}"
                 for (s, sp, d, dp), rs in by_dir.items()]
        return "direction", "; ".join(parts)
    label = labels[0]
    if limited is not None and limited.label == label:
        return "packet-limit", (f"ndpiReader with -T/-U lowered: {limited.label} "
                                f"({limited.confidence}); the flow has {ref.packets} packets")
    if ref.confidence.startswith("Match by"):
        return "guess", f"ndpiReader guessed ({ref.confidence}); flowprobe: {label}"
    ids = {r.get("ndpiMasterProtocol", 0) for r in recs}, {r.get("ndpiAppProtocol", 0) for r in recs}
    ref_ids = [int(x) for x in ref.ids.split(".")]
    probe_ids = sorted({i for s in ids for i in s if i})
    if sorted(set(i for i in ref_ids if i)) == probe_ids:
        return "naming", f"ids {ref.ids} on both sides"
    if label and (_components(label) & _components(ref.label)):
        return "refinement", f"{ref.label} vs {label}"
    return "unexplained", f"ndpiReader {ref.label} ({ref.confidence}) vs flowprobe {label}"


def compare_file(path: Path, packet_limit: int | None = None,
                 reference: list[RefFlow] | None = None,
                 records: list[dict] | None = None, long_timers: bool = True,
                 in_process: bool = False) -> FileResult:
    """Compare ndpiReader's and flowprobe's labels on one capture."""
    refs = run_reference(path) if reference is None else reference
    skipped: dict = {}
    if records is None:
        run = run_flowprobe_in_process if in_process else run_flowprobe
        recs, skipped = run(path, long_timers)
    else:
        recs = records
    res = FileResult(file=path.name, flows=len(refs), probe_records=len(recs),
                     labelled_records=sum(record_label(r) is not None for r in recs))
    by_key = collections.defaultdict(list)
    for r in recs:
        by_key[record_key(r)].append(r)
    refs_per_key = collections.Counter(f.key for f in refs)
    tunnelled = any(r["protocolIdentifier"] in (4, 41) for r in recs)
    limited_refs = ip_refs = None
    for f in refs:
        if not f.classified:
            continue
        res.compared += 1
        mine = by_key.get(f.key, [])
        if refs_per_key[f.key] > 1:         # same 5-tuple on several VLANs
            mine = [r for r in mine if record_vlan(r) == f.vlan]
        if mine and all(record_label(r) == f.label for r in mine):
            res.same += 1
            continue
        limited = None
        if packet_limit is not None and mine:
            if limited_refs is None:
                limited_refs = {(g.key, g.vlan): g for g in run_reference(path, packet_limit)}
            limited = limited_refs.get((f.key, f.vlan))
        ip_only = f
        if not mine and reference is None:
            if ip_refs is None:
                ip_refs = {(g.key, g.vlan): g for g in run_reference(path, bpf=IP_ETHERTYPES)}
            ip_only = ip_refs.get((f.key, f.vlan))
        reason, detail = classify(f, mine, limited, tunnelled, skipped, ip_only)
        res.differences.append(Difference(
            file=path.name, flow=f.tuple_text(), reference=f.label, confidence=f.confidence,
            flowprobe=[record_label(r) for r in mine], reason=reason, detail=detail))
    return res


# ------------------------------------------------------------------- report

def proto_name(proto: int) -> str:
    return {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6"}.get(proto, f"proto {proto}")


def hostport(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def print_report(results: list[FileResult], goal: float = GOAL) -> None:
    reasons = sorted({d.reason for r in results for d in r.differences},
                     key=list(REASONS).index)
    head = f"{'capture':<36} {'flows':>6} {'compared':>8} {'same':>6} {'diff':>5}"
    print(head + "".join(f" {r:>13}" for r in reasons))
    for r in results:
        count = collections.Counter(d.reason for d in r.differences)
        print(f"{r.file:<36} {r.flows:>6} {r.compared:>8} {r.same:>6} {r.different:>5}"
              + "".join(f" {count.get(x, 0) or '':>13}" for x in reasons))
    total = collections.Counter(d.reason for r in results for d in r.differences)
    flows = sum(r.flows for r in results)
    compared = sum(r.compared for r in results)
    same = sum(r.same for r in results)
    print(f"{'total':<36} {flows:>6} {compared:>8} {same:>6} {compared - same:>5}"
          + "".join(f" {total.get(x, 0):>13}" for x in reasons))
    share = same / compared if compared else 1.0
    verdict = "meets" if share >= goal else "below"
    print(f"\nagreement: {same}/{compared} flows that ndpiReader classifies = {100 * share:.2f}% "
          f"({verdict} the {100 * goal:.0f}% goal)")
    unseen = total.get("no-record", 0) + total.get("tunnel", 0) + total.get("non-ip", 0)
    if unseen:
        both = compared - unseen
        print(f"  on the {both} of them that flowprobe also records as IP flows: "
              f"{same}/{both} = {100 * same / both if both else 100:.2f}%")
    labelled = sum(r.labelled_records for r in results)
    records = sum(r.probe_records for r in results)
    print(f"flowprobe records: {records}, with an application label: {labelled}")
    if not total:
        return
    print("\nreasons:")
    for x in reasons:
        print(f"  {x:<13} {total[x]:>5}  {REASONS[x]}")
    print("\ndifferences:")
    for r in results:
        for d in r.differences:
            got = sorted({str(x) for x in d.flowprobe}) or ["(no record)"]
            print(f"  {d.file}: {d.flow}: ndpiReader {d.reference} ({d.confidence}), "
                  f"flowprobe {'/'.join(got)} [{d.reason}] {d.detail}")


def corpus_files() -> list[Path] | None:
    """The captures of $FLOWPROBE_CORPUS/ndpi-sample (or of the folder itself
    when it has no ndpi-sample), or None when the variable is not set."""
    root = os.environ.get(CORPUS_ENV)
    if not root:
        return None
    base = Path(root) / CORPUS_SUB
    if not base.is_dir():
        base = Path(root)
    return sorted(p for p in base.rglob("*") if p.suffix in (".pcap", ".pcapng"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path,
                    help=f"captures (default: every one of ${CORPUS_ENV}/{CORPUS_SUB}/)")
    ap.add_argument("--packet-limit", type=int, default=engine_packet_limit(), metavar="N",
                    help="flowprobe's DPI packet limit per conversation (default: "
                         "FT_DPI_MAX_PACKETS of probe/flowtable/dpi.c, %(default)s): "
                         "differences are also checked against ndpiReader limited to N")
    ap.add_argument("--default-timers", action="store_true",
                    help="run flowprobe with its default expiry timers instead of timers "
                         "longer than any capture (shows what splitting costs)")
    ap.add_argument("--in-process", action="store_true",
                    help="read flowprobe's records through the engine's Python binding "
                         "in this process instead of from replay --json")
    ap.add_argument("--goal", type=float, default=GOAL,
                    help="agreement share to meet (default %(default)s)")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 when the agreement is below --goal")
    ap.add_argument("--json-out", type=Path, default=OUT / "dpi_accuracy.json")
    args = ap.parse_args(argv)

    files = args.files or corpus_files()
    if files is None:
        print(f"bench-dpi: skipped, no captures: set {CORPUS_ENV} to the corpus folder "
              f"(the one holding {CORPUS_SUB}/), e.g. {CORPUS_ENV}=/path/to/corpus make bench-dpi")
        return 0
    if not files:
        print(f"bench-dpi: no .pcap/.pcapng under {os.environ.get(CORPUS_ENV)}", file=sys.stderr)
        return 2
    if shutil.which(NDPIREADER) is None:
        print("bench-dpi: ndpiReader not found: install libndpi-bin (make deps)", file=sys.stderr)
        return 2
    version = subprocess.run([NDPIREADER, "-h"], capture_output=True, text=True).stdout
    m = re.search(r"nDPI (\d[\d.]*)", version)
    probe = "in-process binding" if args.in_process else flowprobe_exe()
    print(f"reference: ndpiReader {m[1] if m else '?'}; flowprobe: {probe}; "
          f"{len(files)} captures; flowprobe timers "
          f"{'default' if args.default_timers else f'{LONG_TIMEOUT_S} s'}"
          + (f"; packet limit {args.packet_limit}" if args.packet_limit else ""), flush=True)

    results = []
    for path in files:
        try:
            results.append(compare_file(path, args.packet_limit,
                                        long_timers=not args.default_timers,
                                        in_process=args.in_process))
        except (RuntimeError, subprocess.SubprocessError, OSError) as e:
            print(f"bench-dpi: {path.name}: {e}", file=sys.stderr)
            return 1
    print_report(results, args.goal)
    if not args.in_process and not any(r.labelled_records for r in results) and engine_has_dpi():
        print("\nnote: the engine has DPI but replay --json carried no applicationName "
              "(JSON lines formatter without the application fields?): try --in-process")

    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(
        [dict(dataclasses.asdict(r), different=r.different) for r in results], indent=1) + "\n")
    print(f"\nresults: {args.json_out}")
    compared = sum(r.compared for r in results)
    same = sum(r.same for r in results)
    if args.check and compared and same / compared < args.goal:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
