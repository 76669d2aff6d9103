"""``make bench``: flowprobe against softflowd and nfpcapd on the same files.

For each seeded capture (10M packets / ~1M flows, 2M packets / ~200k flows;
generated once, cached in bench/out/) and with the page cache warm, times:

  flowprobe     whole process: flowprobe replay FILE --max-flows 2097152
                --idle-timeout 3600 --active-timeout 3600 (/usr/bin/time),
                at least 5 runs (it is the quick one)
  ft_bench      the C path alone (ft_ingest/ft_expire over packets already
                in memory), ns per packet, every flow live
  pf_bench      the capture reader alone (pf_next_batch), ns per packet
  --json        on a third capture (10M packets, ~1.6M flows), flowprobe
                replay FILE --json > /dev/null against the same replay with
                no output (default timeouts): the cost ratio (goal <= 1.5x)
                and JSON records/s (goal >= 1M)
  softflowd     -d -r FILE -n 127.0.0.1:PORT -v 9 -c none, -m large enough
                for every flow, and with its default -m 8192 (which splits
                flows); PORT is a UDP socket this script holds and never reads
  nfpcapd       -r FILE -w TMPDIR (nfdump 1.7.1)

Each figure is the minimum of --runs runs (the machine is shared); the load
average seen is reported beside it. Prints a table and writes
bench/out/results.json. Every child runs under a timeout; nothing is sent
anywhere but 127.0.0.1.

IMIX (bench/imix.py), first: a 10M-packet / ~1M-flow capture with
IMIX-like frame sizes (7:4:4 over 64/576/1500 B, ~567 B mean), replayed by
flowprobe exporting unpaced IPFIX over UDP to a local sink, beside
`softflowd -r` exporting IPFIX to the same sink; wall and CPU seconds (min
and median of interleaved runs) and the ratio (goal: >= 5x).
`--only imix` runs just that part and merges it into results.json.

Export (bench/export.py): on the 2M-packet file, `flowprobe replay --export`
beside `softflowd -r`, each sending NetFlow v5, v9 and IPFIX to a fresh local
nfcapd; wall time, what nfdump reads back, sequence failures, the ratio.
`--only export` runs just that part and merges it into results.json.

DPI (application identification, nDPI): on the 2M-packet capture, the same
replay with DPI on (--dpi-max-flows DPI_POOL, a state for every
conversation) and off (--no-dpi), in the same run: replay ns/packet (the
replay loop's seconds / packets) and the C path (ft_bench), each with the
ratio on/off; and, when FLOWPROBE_CORPUS holds ndpi-sample/ (real payloads;
the synthetic flows carry none, so every packet of a conversation is
inspected up to the packet limit), the C path over its Ethernet captures
merged into one file. `--only dpi` runs just that part.

Encoder hook: when bench/encode.py exists (exporters' benchmark) it is run
and its "encode FORMAT mtu=M ipv6=P%: R M records/s per core" lines go into
the results as "encode".
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
sys.path.insert(0, str(HERE))



def capture_path(packets: int, flows: int, seed: int) -> Path:
    return OUT / f"synth-p{packets}-f{flows}-s{seed}.pcap"


def ensure_capture(packets: int, flows: int, seed: int) -> Path:
    """The cached capture (same parameters and seed, same bytes), generated
    with bench/gen_capture.py under a temporary name when missing."""
    path = capture_path(packets, flows, seed)
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    print(f"generating {path.name} ...", flush=True)
    try:
        subprocess.run([sys.executable, str(HERE / "gen_capture.py"), str(tmp),
                        "--packets", str(packets), "--flows", str(flows), "--seed", str(seed)],
                       check=True, timeout=3600, stdout=subprocess.DEVNULL)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path

MAX_FLOWS = 2097152
#: nDPI flow states for the DPI part: more than the 2M capture's ~200k flows.
DPI_POOL = 262144
CAPTURES = ((10_000_000, 1_000_000), (2_000_000, 200_000))
#: The --json cost is measured on the issue's figure: 10M packets, ~1.6M flows.
CAPTURE_JSON = (10_000_000, 1_600_000)
TARGET_RATIO, TARGET_NS, TARGET_BYTES = 5.0, 50.0, 128


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def run_timed(cmd: list[str], timeout: float, cwd: str | None = None,
              stdout: int = subprocess.PIPE) -> dict:
    """One run under /usr/bin/time: wall s, peak RSS MB, stdout, stderr."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        full = ["/usr/bin/time", "-f", "%e %M %U %S", "-o", tf.name] + cmd
        load = loadavg()
        p = subprocess.Popen(full, stdout=stdout, stderr=subprocess.PIPE,
                             text=True, cwd=cwd, start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.communicate()
            raise RuntimeError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}")
        if p.returncode != 0:
            raise RuntimeError(f"exit {p.returncode}: {' '.join(cmd)}\n{err[-2000:]}")
        wall, rss_kb, user, system = tf.read().split()[-4:]
    return {"wall_s": float(wall), "rss_mb": int(rss_kb) / 1024,
            "cpu_s": float(user) + float(system), "stdout": out,
            "stderr": err, "load": max(load, loadavg())}


def best(runs: list[dict], key: str = "wall_s") -> dict:
    r = dict(min(runs, key=lambda x: x[key]))
    r["load_max"] = max(x["load"] for x in runs)
    r["all_" + key] = [round(x[key], 3) for x in runs]
    for k in ("stdout", "stderr"):
        r.pop(k, None)
    return r


def build(name: str, sources: list[str], libs: list[str]) -> str:
    exe = OUT / name
    cmd = ["gcc", "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror",
           "-I", str(ROOT / "include"), "-I", str(ROOT / "probe" / "flowtable"),
           "-I", str(ROOT / "driver"), "-isystem", "/usr/include/ndpi",
           "-o", str(exe)] + [str(ROOT / s) for s in sources] + libs
    subprocess.run(cmd, check=True, timeout=300)
    return str(exe)


def build_ft_bench() -> str:
    return build("ft_bench", ["bench/c/ft_bench.c", "probe/flowtable/flowtable.c",
                              "probe/flowtable/expire.c", "probe/flowtable/parse.c",
                              "probe/flowtable/dpi.c"], ["-lndpi"])


def ndpi_sample_capture() -> Path | None:
    """FLOWPROBE_CORPUS's ndpi-sample/ Ethernet classic pcaps merged into one
    file (bench/out, cached), or None without the corpus."""
    root = os.environ.get("FLOWPROBE_CORPUS")
    folder = Path(root) / "ndpi-sample" if root else None
    if not folder or not folder.is_dir() or shutil.which("mergecap") is None:
        return None
    files = sorted(f for f in folder.glob("*.pcap")
                   if f.read_bytes()[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
                   and int.from_bytes(f.read_bytes()[20:24], "little") == 1)
    out = OUT / f"ndpi-sample-{len(files)}.pcap"
    if not out.exists() and files:
        subprocess.run(["mergecap", "-F", "pcap", "-w", str(out), *map(str, files)],
                       check=True, timeout=300)
    return out if files else None


def measure_dpi(path: Path, packets: int, runs: int, exes: dict) -> dict:
    """Replay and C path with DPI on and off on the same capture, same run."""
    res: dict = {"file": str(path), "packets": packets, "dpi_pool": DPI_POOL}
    f = str(path)
    to = 60 + packets / 20_000
    print(f"{path.name}: DPI on (--dpi-max-flows {DPI_POOL}) / off (--no-dpi)", flush=True)
    base = [exes["flowprobe"], "replay", f, "--max-flows", str(MAX_FLOWS),
            "--idle-timeout", "3600", "--active-timeout", "3600"]
    for name, extra in (("replay_on", ["--dpi-max-flows", str(DPI_POOL)]),
                        ("replay_off", ["--no-dpi"])):
        warm(path)
        rs = [run_timed(base + extra, to) for _ in range(runs)]
        for r in rs:
            r["loop_s"] = float(re.search(r"packets per second\s+[\d,]+\s+\(([\d.]+) s\)",
                                          r["stderr"]).group(1))
            r["ns_per_packet"] = r["loop_s"] * 1e9 / packets
        res[name] = best(rs, "ns_per_packet")
    for name, pool in (("c_on", DPI_POOL), ("c_off", 0)):
        warm(path)
        rs = [run_timed([exes["ft_bench"], f, str(MAX_FLOWS), "4096", str(pool)], to)
              for _ in range(max(runs, 3))]
        for r in rs:
            r.update(json.loads(r["stdout"].strip().splitlines()[-1]))
        res[name] = best(rs, "ns_per_packet")
    res["replay_ratio"] = res["replay_on"]["ns_per_packet"] / res["replay_off"]["ns_per_packet"]
    res["c_ratio"] = res["c_on"]["ns_per_packet"] / res["c_off"]["ns_per_packet"]
    res["slot_bytes"] = res["c_on"]["dpi_slot_bytes"]
    real = ndpi_sample_capture()
    if real is not None:
        r = {}
        for name, pool in (("on", 65536), ("off", 0)):
            rs = [run_timed([exes["ft_bench"], str(real), "1048576", "4096", str(pool)], 120)
                  for _ in range(max(runs, 5))]
            for x in rs:
                x.update(json.loads(x["stdout"].strip().splitlines()[-1]))
            r[name] = best(rs, "ns_per_packet")
        r["ratio"] = r["on"]["ns_per_packet"] / r["off"]["ns_per_packet"]
        r["file"], r["packets"] = str(real), r["on"]["packets"]
        res["ndpi_sample"] = r
    print(dpi_table(res), flush=True)
    return res


def dpi_table(res: dict) -> str:
    on, off = res["replay_on"], res["replay_off"]
    c_on, c_off = res["c_on"], res["c_off"]
    label = f"{res['packets'] / 1e6:g}M pkts"
    rows = [f"{label:<10} {'replay, DPI on / off':<24} {on['ns_per_packet']:7.1f} / "
            f"{off['ns_per_packet']:.1f} ns/packet, ratio {res['replay_ratio']:.2f}x "
            f"(RSS {on['rss_mb']:.0f} / {off['rss_mb']:.0f} MB)",
            f"{label:<10} {'C path, DPI on / off':<24} {c_on['ns_per_packet']:7.1f} / "
            f"{c_off['ns_per_packet']:.1f} ns/packet, ratio {res['c_ratio']:.2f}x "
            f"({c_on['dpi_packets']:,} packets inspected, {c_on['dpi_inspected']:,} "
            f"conversations, pool peak {c_on['dpi_pool_peak']:,})"]
    real = res.get("ndpi_sample")
    if real:
        rows.append(f"{'ndpi-sample':<10} {'C path, DPI on / off':<24} "
                    f"{real['on']['ns_per_packet']:7.1f} / {real['off']['ns_per_packet']:.1f} "
                    f"ns/packet, ratio {real['ratio']:.2f}x ({real['packets']:,} packets, "
                    f"{real['on']['dpi_packets']:,} inspected, {real['on']['dpi_detected']:,} "
                    f"of {real['on']['dpi_inspected']:,} conversations detected)")
    rows.append(f"DPI memory: {res['slot_bytes']} B per nDPI flow state (688 B nDPI 4.2 "
                f"struct + bookkeeping), held only while a conversation is under detection; "
                f"+12 B per table flow for labels")
    return "\n".join(rows)


def dpi_only(a) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    exes = {"ft_bench": build_ft_bench(), "flowprobe": flowprobe_exe()}
    packets, flows = CAPTURES[1]
    res = measure_dpi(ensure_capture(packets, flows, a.seed), packets, a.runs, exes)
    res_path = OUT / "results.json"
    doc = json.loads(res_path.read_text()) if res_path.exists() else {}
    doc["dpi"] = res
    res_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"wrote {res_path}")
    return 0


def warm(path: Path) -> None:
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True, timeout=600)


def flowprobe_exe() -> str:
    """The console script of this interpreter's install (what a package puts
    on PATH), not a version-manager shim in front of it: pyenv's bash shim
    alone adds ~0.2 s to every start."""
    exe = Path(sys.executable).parent / "flowprobe"
    return str(exe) if exe.exists() else shutil.which("flowprobe") or "flowprobe"


def measure_file(path: Path, packets: int, runs: int, sink_port: int, exes: dict) -> dict:
    res: dict = {"file": str(path), "bytes": path.stat().st_size, "packets": packets}
    f = str(path)
    to = 60 + packets / 50_000          # generous: 50 kpps floor

    def tool(name, cmd, n=runs, cwd=None):
        warm(path)
        rs = [run_timed(cmd, to, cwd) for _ in range(n)]
        r = best(rs)
        r["pps"] = packets / r["wall_s"]
        res[name] = r
        print(f"  {name:<22} {r['pps'] / 1e6:6.2f} Mpps  {r['wall_s']:7.2f} s  "
              f"{r['rss_mb']:8.1f} MB  (runs {r['all_wall_s']}, load<= {r['load_max']:.1f})",
              flush=True)
        return rs

    rs = tool("flowprobe", [exes["flowprobe"], "replay", f, "--max-flows", str(MAX_FLOWS),
                            "--idle-timeout", "3600", "--active-timeout", "3600"],
              n=max(runs, 5))
    m = re.search(r"packets per second\s+([\d,]+)\s+\(([\d.]+) s\)", rs[0]["stderr"])
    fl = re.search(r"flows created\s+([\d,]+)", rs[0]["stderr"])
    res["flowprobe"]["flows"] = int(fl.group(1).replace(",", "")) if fl else None
    res["flowprobe"]["replay_loop_s"] = min(
        float(re.search(r"\(([\d.]+) s\)", r["stderr"]).group(1)) for r in rs) if m else None


    # C path alone and reader alone: min ns/packet of max(runs, 5)
    for name, cmd in (("ft_bench", [exes["ft_bench"], f, str(MAX_FLOWS), "4096"]),
                      ("pf_bench", [exes["pf_bench"], f, "4096"])):
        warm(path)
        rs = [run_timed(cmd, to) for _ in range(max(runs, 5))]
        for r in rs:
            r.update(json.loads(r["stdout"].strip().splitlines()[-1]))
        r = best(rs, "ns_per_packet")
        res[name] = r
        print(f"  {name:<22} {r['ns_per_packet']:6.1f} ns/packet "
              f"(runs {r['all_ns_per_packet']}, load<= {r['load_max']:.1f})", flush=True)

    with tempfile.TemporaryDirectory(prefix="fpbench-") as tmp:
        sf = ["softflowd", "-d", "-r", f, "-n", f"127.0.0.1:{sink_port}", "-v", "9",
              "-c", "none", "-p", os.path.join(tmp, "sf.pid")]
        tool("softflowd -m 4M", sf + ["-m", "4000000"])
        tool("softflowd (default -m)", sf)
        nfdir = os.path.join(tmp, "nf")

        def nf_cmd():
            shutil.rmtree(nfdir, ignore_errors=True)
            os.makedirs(nfdir)
            return ["nfpcapd", "-r", f, "-w", nfdir]
        warm(path)
        rs = []
        for _ in range(runs):
            rs.append(run_timed(nf_cmd(), to, cwd=tmp))
        r = best(rs)
        r["pps"] = packets / r["wall_s"]
        res["nfpcapd"] = r
        print(f"  {'nfpcapd':<22} {r['pps'] / 1e6:6.2f} Mpps  {r['wall_s']:7.2f} s  "
              f"{r['rss_mb']:8.1f} MB  (runs {r['all_wall_s']}, load<= {r['load_max']:.1f})",
              flush=True)
    return res


def measure_json(path: Path, packets: int, runs: int, exes: dict) -> dict:
    """`replay --json` to /dev/null against the same replay with no output
    (default timeouts) on the CAPTURE_JSON file. JSON records/s is records
    over the extra CPU time that --json costs; the goals are a cost ratio
    of at most 1.5 and at least 1M records/s."""
    f, timeout = str(path), 60 + packets / 50_000
    print(f"{path.name} ({path.stat().st_size / 2**20:.0f} MiB): --json", flush=True)
    cmd = [exes["flowprobe"], "replay", f, "--max-flows", str(MAX_FLOWS)]
    out = {}
    for name, extra in (("plain", []), ("json", ["--json"])):
        warm(Path(f))
        rs = [run_timed(cmd + extra, timeout, stdout=subprocess.DEVNULL)
              for _ in range(max(runs, 3))]
        recs = sum(int(v.replace(",", "")) for v in re.findall(
            r"expired \S+\s+([\d,]+)", rs[0]["stderr"]))
        out[name] = best(rs)
        out[name]["records"] = recs
        out[name]["cpu_s"] = min(r["cpu_s"] for r in rs)
    plain, js = out["plain"]["wall_s"], out["json"]["wall_s"]
    out["records"] = out["json"]["records"]
    out["ratio"] = js / plain
    # CPU seconds (user + sys, least of each's runs): less inflated by contention
    out["cpu_ratio"] = out["json"]["cpu_s"] / out["plain"]["cpu_s"]
    # the marginal rate: records over the extra CPU time --json takes (wall
    # time differences drown in the noise of a shared machine)
    extra_cpu = out["json"]["cpu_s"] - out["plain"]["cpu_s"]
    out["json_records_per_s"] = out["records"] / extra_cpu if extra_cpu > 0.02 else None
    out["sink_records_per_s"] = json_sink_rate()
    marginal = (f"{out['json_records_per_s'] / 1e6:.2f} M records per extra CPU s"
                if out["json_records_per_s"] else "extra CPU within noise")
    print(f"  {'replay --json':<22} {out['records']:,} records: {js:.2f} s vs {plain:.2f} s "
          f"with no output = {out['ratio']:.2f}x (goal <= 1.5x; CPU s "
          f"{out['cpu_ratio']:.2f}x); {marginal}; C sink alone "
          f"{out['sink_records_per_s'] / 1e6:.2f} M records per CPU s "
          f"(runs {out['json']['all_wall_s']} / {out['plain']['all_wall_s']}, "
          f"load<= {out['json']['load_max']:.1f})", flush=True)
    return out


def json_sink_rate(n_calls: int = 400, batch: int = 4096) -> float:
    """Records per CPU second of the JSON-lines sink alone (probe/sinks.py ->
    C) writing to /dev/null: 4096 records (4 in 5 IPv4, the rest IPv6, MACs, TCP/UDP/
    ICMP) written n_calls times, one C call each."""
    import random
    from flowprobe.exporters._encode import ffi
    from flowprobe.probe.sinks import JsonLines
    rng = random.Random(1)
    arr = ffi.new("struct ft_record[]", batch)
    for i in range(batch):
        r = arr[i]
        r.ip_version = 6 if i % 5 == 0 else 4
        for j in range(16 if r.ip_version == 6 else 4):
            r.src_addr[j], r.dst_addr[j] = rng.randrange(256), rng.randrange(256)
        r.protocol = (6, 17, 1)[i % 3]
        r.src_port, r.dst_port = rng.randrange(65536), 443
        r.packets, r.octets = rng.randrange(1, 5000), rng.randrange(40, 10**7)
        r.first_ns = 1_700_000_000_000_000_000 + rng.randrange(10**12)
        r.last_ns = r.first_ns + rng.randrange(10**11)
        r.ifindex, r.ttl_min, r.ttl_max, r.end_reason, r.has_mac = 3, 60, 64, 1, 1
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        sink = JsonLines(fd)
        t = time.process_time()     # CPU time: what contention does not inflate
        for _ in range(n_calls):
            sink(arr, batch)
        return n_calls * batch / (time.process_time() - t)
    finally:
        os.close(fd)


ENCODE_LINE = re.compile(r"encode (\S+)\s+mtu=(\d+) ipv6=(\d+)%: +([\d.]+) M records/s")


def encode_hook(timeout: float = 900) -> dict | None:
    """bench/encode.py (exporters' benchmark): records/s per core per format.
    None when the script is absent; its lines are parsed, raw text kept if
    they do not match."""
    script = HERE / "encode.py"
    if not script.exists():
        return None
    try:
        p = subprocess.run([sys.executable, str(script)], capture_output=True,
                           text=True, timeout=timeout, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    rates = {f"{m[1]} ipv6={m[3]}%": float(m[4]) * 1e6
             for m in map(ENCODE_LINE.search, p.stdout.splitlines()) if m}
    if p.returncode != 0 or not rates:
        return {"error": f"exit {p.returncode}", "stdout": p.stdout[-1000:],
                "stderr": p.stderr[-1000:]}
    return {"records_per_s_per_core": rates}


def table(results: list[dict], entry: dict) -> str:
    rows = [f"{'file':<10} {'tool':<24} {'Mpps':>7} {'wall s':>8} {'RSS MB':>8} "
            f"{'fp/peer':>8}"]
    for res in results:
        label = f"{res['packets'] / 1e6:g}M pkts"
        fp = res["flowprobe"]["pps"]
        for name in ("flowprobe", "softflowd -m 4M", "softflowd (default -m)", "nfpcapd"):
            r = res[name]
            ratio = "" if name == "flowprobe" else f"{fp / r['pps']:7.2f}x"
            rows.append(f"{label:<10} {name:<24} {r['pps'] / 1e6:7.2f} {r['wall_s']:8.2f} "
                        f"{r['rss_mb']:8.1f} {ratio:>8}")
        rows.append(f"{label:<10} {'C path (ft_bench)':<24} {res['ft_bench']['ns_per_packet']:>7.1f}"
                    f" ns/packet, flows live {res['ft_bench']['flows_peak']:,}")
        rows.append(f"{label:<10} {'reader (pf_bench)':<24} {res['pf_bench']['ns_per_packet']:>7.1f}"
                    f" ns/packet")

    js = entry.get("json")
    if js:
        rows.append(f"{'10M pkts':<10} {'replay --json':<24} {js['ratio']:>7.2f}"
                    f"x the time with no output ({js['records']:,} records; C sink "
                    f"alone {js['sink_records_per_s'] / 1e6:.2f} M records per CPU s)")
    rows.append(f"flow entry {entry['entry_bytes']} B (sizeof); table memory / max_flows "
                f"{entry['bytes_per_flow_total']:.1f} B ({entry['table_bytes'] / 2**20:.0f} MiB "
                f"for {MAX_FLOWS:,})")
    return "\n".join(rows)


def run_export(a, exes: dict) -> dict | None:
    """bench/export.py on the 2M-packet capture; errors are kept, not raised."""
    import export as bench_export
    packets, flows = CAPTURES[1]
    path = ensure_capture(packets, flows, a.seed)
    print(f"export: {path.name} to nfcapd (v5, v9, IPFIX)", flush=True)
    try:
        return bench_export.measure_export(path, packets, a.export_runs or a.runs, exes,
                                           run_timed, warm, a.nfcapd_buffer)
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
        print(f"export: failed: {e}", flush=True)
        return {"error": str(e)}


def imix_only(a) -> int:
    """`--only imix`: the IMIX replay-export part alone, merged into results.json."""
    import imix
    exes = {"flowprobe": flowprobe_exe()}
    for exe in ("softflowd", "gcc", "/usr/bin/time", exes["flowprobe"]):
        if shutil.which(exe) is None:
            sys.exit(f"bench: {exe} not found (make deps build)")
    res = imix.measure(a.runs, exes, run_timed, warm, a.seed)
    text = imix.table(res)
    print("\n" + text)
    merge_results({"imix": res, "imix_table": text,
                   "imix_when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return 0


def merge_results(part: dict) -> None:
    res_path = OUT / "results.json"
    try:
        doc = json.loads(res_path.read_text())
    except (OSError, ValueError):
        doc = {}
    doc.update(part)
    OUT.mkdir(parents=True, exist_ok=True)
    res_path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {res_path}")


def export_only(a) -> int:
    """`--only export`: the export part alone, merged into results.json."""
    import export as bench_export
    for exe in ("softflowd", "nfcapd", "nfdump", "/usr/bin/time", "flowprobe"):
        if shutil.which(exe) is None:
            sys.exit(f"bench: {exe} not found (make deps build)")
    OUT.mkdir(parents=True, exist_ok=True)
    exes = {"flowprobe": flowprobe_exe()}
    print(f"flowprobe: {exes['flowprobe']}", flush=True)
    t0 = time.monotonic()
    exp = run_export(a, exes)
    if exp is None or "error" in exp:
        return 1
    text = bench_export.export_table(exp)
    print("\n" + text)
    res_path = OUT / "results.json"
    try:
        doc = json.loads(res_path.read_text())
    except (OSError, ValueError):
        doc = {}
    doc["export"] = exp
    doc["export_when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    doc["export_seconds"] = round(time.monotonic() - t0, 1)
    doc["export_table"] = text
    res_path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {res_path}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description="flowprobe vs softflowd/nfpcapd")
    ap.add_argument("--runs", type=int, default=3, help="runs per tool (min is kept)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--small-only", action="store_true", help="only the 2M-packet file")
    ap.add_argument("--only", choices=("all", "imix", "export", "dpi"), default="all",
                    help="'imix': only the IMIX replay-export against softflowd -r "
                         "(bench/imix.py); 'export': only the end-to-end export to "
                         "nfcapd (bench/export.py); 'dpi': only replay with DPI on vs off")
    ap.add_argument("--export-runs", type=int, default=None,
                    help="runs per (format, tool) in the export part (default --runs)")
    ap.add_argument("--nfcapd-buffer", type=int, default=None, metavar="BYTES",
                    help="nfcapd -B for the export part (same collector for both tools)")
    a = ap.parse_args()
    if a.only == "export":
        return export_only(a)
    if a.only == "imix":
        return imix_only(a)
    if a.only == "dpi":
        return dpi_only(a)
    for exe in ("softflowd", "nfpcapd", "nfcapd", "nfdump", "gcc", "/usr/bin/time",
                flowprobe_exe()):
        if shutil.which(exe) is None:
            sys.exit(f"bench: {exe} not found (make deps build)")
    OUT.mkdir(parents=True, exist_ok=True)
    exes = {
        "ft_bench": build_ft_bench(),
        "pf_bench": build("pf_bench", ["bench/c/pf_bench.c", "driver/pcapfile.c",
                                       "driver/pcapfile_mmap.c",
                                       "driver/pcapfile_libpcap.c"], ["-lpcap"]),
        "flowprobe": flowprobe_exe(),
    }
    print(f"flowprobe: {exes['flowprobe']}", flush=True)
    import imix
    imix_res = imix.measure(a.runs, exes, run_timed, warm, a.seed)
    print(imix.table(imix_res), flush=True)
    caps = CAPTURES[1:] if a.small_only else CAPTURES
    files = [(ensure_capture(p, fl, a.seed), p) for p, fl in caps]
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # never read
    sink.bind(("127.0.0.1", 0))
    port = sink.getsockname()[1]
    results = []
    t0 = time.monotonic()
    try:
        for path, packets in files:
            print(f"{path.name} ({path.stat().st_size / 2**20:.0f} MiB), sink 127.0.0.1:{port}",
                  flush=True)
            results.append(measure_file(path, packets, a.runs, port, exes))
    finally:
        sink.close()
    js = measure_json(ensure_capture(*CAPTURE_JSON, a.seed), CAPTURE_JSON[0], a.runs, exes)
    dpi = measure_dpi(ensure_capture(*CAPTURES[1], a.seed), CAPTURES[1][0], a.runs, exes)
    big = results[0]
    entry = {"entry_bytes": big["ft_bench"]["entry_bytes"],
             "table_bytes": big["ft_bench"]["table_bytes"],
             "bytes_per_flow_total": big["ft_bench"]["table_bytes"] / MAX_FLOWS,
             "json": js}
    fp = big["flowprobe"]["pps"]
    targets = {
        "ratio_vs_softflowd_big_table": fp / big["softflowd -m 4M"]["pps"],
        "ratio_vs_softflowd_default": fp / big["softflowd (default -m)"]["pps"],
        "ratio_vs_nfpcapd": fp / big["nfpcapd"]["pps"],
        "c_path_ns_per_packet": big["ft_bench"]["ns_per_packet"],
        "flows_live_in_c_path": big["ft_bench"]["flows_peak"],
        "entry_bytes": entry["entry_bytes"],
    }
    targets["ratio_vs_softflowd_imix_export"] = imix_res["softflowd"]["ratio_wall_median"]
    targets["met"] = {
        "5x_softflowd_imix_export": imix_res["target_met"],
        "5x_softflowd_big_table": targets["ratio_vs_softflowd_big_table"] >= TARGET_RATIO,
        "5x_softflowd_default": targets["ratio_vs_softflowd_default"] >= TARGET_RATIO,
        "c_path_50ns": targets["c_path_ns_per_packet"] <= TARGET_NS,
        "entry_128B": entry["entry_bytes"] <= TARGET_BYTES,
        "json_1.5x": js["ratio"] <= 1.5,
        "json_1M_records_s": js["sink_records_per_s"] >= 1e6
        and (js["json_records_per_s"] or 1e6) >= 1e6,
    }
    enc = encode_hook()
    exp = run_export(a, exes)
    text = imix.table(imix_res) + "\n" + table(results, entry) + "\n" + dpi_table(dpi)
    if exp is not None:
        import export as bench_export
        text += "\n" + bench_export.export_table(exp)
    print("\n" + text)
    print("targets: " + ", ".join(f"{k}={'MET' if v else 'MISSED'}"
                                 for k, v in targets["met"].items()))
    if enc is None:
        print("encode: bench/encode.py not present")
    elif "records_per_s_per_core" in enc:
        for k, v in enc["records_per_s_per_core"].items():
            print(f"encode {k:<18} {v / 1e6:6.2f} M records/s per core")
    else:
        print("encode: " + json.dumps(enc))
    doc = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count(), "loadavg_end": loadavg()},
           "seconds": round(time.monotonic() - t0, 1), "files": results, "entry": entry,
           "targets": targets, "imix": imix_res, "encode": enc, "export": exp, "dpi": dpi,
           "table": text}
    (OUT / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {OUT / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
