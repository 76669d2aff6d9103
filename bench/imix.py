"""The replay-export bench on an IMIX-like capture (issue 12, item 7).

    python bench/run.py --only imix [--runs N]      (part of `make bench`)

Capture: bench/c/imix_gen.c (10M packets, 1M flow keys, frame sizes 7:4:4
over 64/576/1500 bytes, ~567 B mean on the wire; TCP/UDP/ICMP; 90% IPv4,
10% IPv6; 198.18.0.0/15 and 2001:db8::/32 only), generated once in C and
cached in bench/out/ under a name holding its parameters and a hash of
the generator's code (a changed generator makes a new file). Its
generator summary (mean frame size, flows) is kept beside it as .json.

Timed as whole processes (/usr/bin/time), page cache warm, runs
interleaved (flowprobe, softflowd, softflowd -m 4M, flowprobe, ...) so
that load from other work on the machine hits each tool alike:

  flowprobe   replay FILE -c CFG --max-flows 2097152 --idle-timeout 3600
              --active-timeout 3600 --no-dpi (softflowd identifies no
              application; the DPI cost is `--only dpi`'s figure), CFG
              exporting IPFIX over UDP, unpaced
              (rate_msgs_s: 0), to 127.0.0.1:PORT
  softflowd   -d -c none -r FILE -n 127.0.0.1:PORT -v 10, with its default
              table (-m 8192, which splits long flows and is its fast
              setting) and with -m 4000000 (every flow held, as flowprobe)

PORT is a UDP socket this script holds and never reads (a sink: both
tools' datagrams are dropped alike at its full buffer). Prints wall and
CPU seconds (min and median of the runs), the ratios softflowd /
flowprobe (of the mins, of the medians, and per round: the goal is judged
on the median of the per-round wall ratios, each pair having run under
about the same load), and the load average seen. Nothing leaves 127.0.0.1.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import statistics
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
GEN_SRC = HERE / "c" / "imix_gen.c"
PACKETS, FLOWS = 10_000_000, 1_000_000
MAX_FLOWS = 2097152
TARGET_RATIO = 5.0


def _gen_hash() -> str:
    """Hash of the generator's code (comments left out: editing one does
    not make a new 5.6 GB file)."""
    code = re.sub(r"/\*.*?\*/", "", GEN_SRC.read_text(), flags=re.S)
    return hashlib.sha256(code.encode()).hexdigest()[:10]


def capture_path(packets: int, flows: int, seed: int) -> Path:
    return OUT / f"imix-p{packets}-f{flows}-s{seed}-g{_gen_hash()}.pcap"


def ensure_capture(packets: int = PACKETS, flows: int = FLOWS, seed: int = 1) -> tuple[Path, dict]:
    """The cached capture and its generator summary; generated (in C, under
    a temporary name) when missing."""
    path = capture_path(packets, flows, seed)
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return path, json.loads(meta.read_text())
    OUT.mkdir(parents=True, exist_ok=True)
    exe = OUT / "imix_gen"
    subprocess.run(["gcc", "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-o", str(exe),
                    str(GEN_SRC), "-lm"], check=True, timeout=300)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    print(f"generating {path.name} ...", flush=True)
    try:
        p = subprocess.run([str(exe), str(tmp), str(packets), str(flows), str(seed)],
                           check=True, timeout=1800, capture_output=True, text=True)
        summary = json.loads(p.stdout.strip().splitlines()[-1])
        os.replace(tmp, path)
        meta.write_text(json.dumps(summary) + "\n")
    finally:
        tmp.unlink(missing_ok=True)
    return path, summary


def _summary(rs: list[dict]) -> dict:
    walls = [r["wall_s"] for r in rs]
    cpus = [r["cpu_s"] for r in rs]
    return {"wall_min": min(walls), "wall_median": statistics.median(walls),
            "cpu_min": min(cpus), "cpu_median": statistics.median(cpus),
            "all_wall_s": [round(w, 2) for w in walls], "all_cpu_s": [round(c, 2) for c in cpus],
            "load_max": max(r["load"] for r in rs), "load_min": min(r["load"] for r in rs),
            "rss_mb": max(r["rss_mb"] for r in rs)}


def measure(runs: int, exes: dict, run_timed, warm, seed: int = 1) -> dict:
    path, gen = ensure_capture(seed=seed)
    f = str(path)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)    # never read
    sink.bind(("127.0.0.1", 0))
    port = sink.getsockname()[1]
    print(f"{path.name} ({path.stat().st_size / 2**20:.0f} MiB): {gen['packets']:,} packets, "
          f"{gen['flows']:,} flow keys, mean frame {gen['mean_frame_bytes']:.1f} B on the wire "
          f"({gen['mix']}); IPFIX/UDP unpaced to sink 127.0.0.1:{port}", flush=True)
    timeout = 600
    tools = {
        "flowprobe": [exes["flowprobe"], "replay", f, "--max-flows", str(MAX_FLOWS),
                      "--idle-timeout", "3600", "--active-timeout", "3600",
                      # like for like: softflowd does no application
                      # identification; its cost is the `dpi` part's figure
                      "--no-dpi"],
    }
    res: dict = {"file": f, "generator": gen, "runs": runs}
    out: dict = {k: [] for k in ("flowprobe", "softflowd", "softflowd -m 4M")}
    with tempfile.TemporaryDirectory(prefix="fpbench-imix-") as tmp:
        cfg = Path(tmp) / "export.yaml"
        cfg.write_text(f"export:\n  - url: ipfix://127.0.0.1:{port}\n    rate_msgs_s: 0\n")
        tools["flowprobe"] += ["-c", str(cfg)]
        sf = ["softflowd", "-d", "-c", "none", "-r", f, "-n", f"127.0.0.1:{port}", "-v", "10",
              "-p", os.path.join(tmp, "sf.pid")]
        tools["softflowd"] = sf
        tools["softflowd -m 4M"] = sf + ["-m", "4000000"]
        try:
            warm(path)
            for i in range(runs):
                for name, cmd in tools.items():
                    r = run_timed(cmd, timeout)
                    if name == "flowprobe":
                        fl = re.search(r"flows created\s+([\d,]+)", r["stderr"])
                        ex = re.search(r"export \S+: ([\d,]+) of ([\d,]+) records", r["stderr"])
                        r["flows"] = int(fl.group(1).replace(",", "")) if fl else None
                        r["records_exported"] = int(ex.group(1).replace(",", "")) if ex else None
                    else:
                        m = re.search(r"Flows exported: (\d+)", r["stdout"])
                        r["flows"] = int(m.group(1)) if m else None
                    out[name].append(r)
                    print(f"  run {i + 1} {name:<16} wall {r['wall_s']:6.2f} s  CPU "
                          f"{r['cpu_s']:6.2f} s  flows/records {r['flows']:,}  "
                          f"load {r['load']:.2f}", flush=True)
        finally:
            sink.close()
    for name, rs in out.items():
        res[name] = _summary(rs)
        res[name]["flows"] = rs[0]["flows"]
    res["flowprobe"]["records_exported"] = out["flowprobe"][0].get("records_exported")
    fp = res["flowprobe"]
    for peer in ("softflowd", "softflowd -m 4M"):
        p = res[peer]
        p["ratio_wall_min"] = p["wall_min"] / fp["wall_min"]
        p["ratio_wall_median"] = p["wall_median"] / fp["wall_median"]
        p["ratio_cpu_min"] = p["cpu_min"] / fp["cpu_min"]
        # per round (the two ran back to back, under about the same load)
        p["ratio_wall_rounds"] = [round(b["wall_s"] / a["wall_s"], 2)
                                  for a, b in zip(out["flowprobe"], out[peer])]
        p["ratio_cpu_rounds"] = [round(b["cpu_s"] / a["cpu_s"], 2)
                                 for a, b in zip(out["flowprobe"], out[peer])]
        p["ratio_wall_rounds_median"] = statistics.median(p["ratio_wall_rounds"])
        p["ratio_cpu_rounds_median"] = statistics.median(p["ratio_cpu_rounds"])
    # the goal on the per-round wall ratios' median: each pair shared its load
    res["target_met"] = res["softflowd"]["ratio_wall_rounds_median"] >= TARGET_RATIO
    return res


def table(res: dict) -> str:
    g = res["generator"]
    rows = [f"IMIX replay + IPFIX/UDP export (unpaced), {g['packets'] / 1e6:g}M packets, "
            f"{res['flowprobe']['flows']:,} flows, mean frame {g['mean_frame_bytes']:.1f} B "
            f"({g['mix']}), {res['runs']} interleaved runs",
            f"{'tool':<24} {'wall min':>8} {'median':>8} {'CPU min':>8} {'median':>8} "
            f"{'RSS MB':>7} {'peer/fp wall min':>16} {'median':>7} {'CPU':>6}"]
    for name in ("flowprobe", "softflowd", "softflowd -m 4M"):
        r = res[name]
        label = {"softflowd": "softflowd (default -m)"}.get(name, name)
        ratio = ("" if name == "flowprobe" else
                 f"{r['ratio_wall_min']:15.2f}x {r['ratio_wall_median']:6.2f}x "
                 f"{r['ratio_cpu_min']:5.2f}x")
        rows.append(f"{label:<24} {r['wall_min']:8.2f} {r['wall_median']:8.2f} "
                    f"{r['cpu_min']:8.2f} {r['cpu_median']:8.2f} {r['rss_mb']:7.0f} {ratio}")
    for name in ("softflowd", "softflowd -m 4M"):
        r = res[name]
        rows.append(f"{name} / flowprobe per round: wall {r['ratio_wall_rounds']} (median "
                    f"{r['ratio_wall_rounds_median']:.2f}x), CPU {r['ratio_cpu_rounds']} "
                    f"(median {r['ratio_cpu_rounds_median']:.2f}x)")
    lo = min(res[n]["load_min"] for n in ("flowprobe", "softflowd"))
    hi = max(res[n]["load_max"] for n in ("flowprobe", "softflowd"))
    rows.append(f"load average during the runs {lo:.2f}-{hi:.2f}; goal flowprobe >= "
                f"{TARGET_RATIO:g}x softflowd -r (default -m, median of the per-round wall ratios): "
                f"{'MET' if res['target_met'] else 'MISSED'}")
    return "\n".join(rows)
