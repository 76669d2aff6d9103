"""The sampling rate reaches the collectors that scale: an export that
declares 1:10 sampling (deterministic or random, IPFIX or NetFlow v9) of an
unsampled capture is scaled by exactly 10 by nfdump 1.7.1 (its sampler, from
the options) and by nfacctd 1.7.7 with `nfacctd_renormalize: true`.
The live test (tests/live/test_interop_sampling.py) samples for real."""
import os
import struct
import subprocess

import pytest

import synth
from collectors import nfacctd, nfcapd
from flowprobe.config.schema import FlowConfig
from flowprobe.exporters import templates
from flowprobe.exporters.base import EncoderConfig
from flowprobe.exporters.exporter import ENCODERS, build_exporters
from flowprobe.probe.flowtable.table import FlowTable
from flowprobe.probe.replay import replay_files

RATE = 10


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    d = tmp_path_factory.mktemp("cap")
    path = str(d / "synth.pcap")
    truth = synth.generate(path, flows=2000, packets=20000, seed=29)
    return path, truth


def export(cap, items, **sampling):
    """Replay `cap` in this process into exporters built from `items`, with
    the capture's packet sampling (`sampling_interval`, `sampling_mode`)."""
    exps = build_exporters(items, **sampling)
    table = FlowTable(FlowConfig(), exps.sink)
    exps.attach(table)
    replay_files([cap], table, 1024)
    table.flush()
    exps.close()


def nfdump_totals(directory):
    out = subprocess.run(["nfdump", "-I", "-R", str(directory)], capture_output=True,
                         text=True, check=True).stdout
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    samplers = []
    for f in sorted(os.listdir(directory)):
        if f.startswith("nfcapd.2"):
            e = subprocess.run(["nfdump", "-E", os.path.join(directory, f)],
                               capture_output=True, text=True).stdout
            samplers += [line.strip() for line in e.splitlines() if "Sampler:" in line]
    return (int(info["Packets"]), int(info["Bytes"]), int(info["Sequence failures"]),
            samplers)


# v9 sends the same rate template in both modes
@pytest.mark.parametrize("scheme,mode", [("ipfix", "deterministic"), ("ipfix", "random"),
                                         ("netflow9", "random")])
def test_nfdump_and_nfacctd_scale_by_the_declared_rate(scheme, mode, capture, tmp_path):
    """Declared 1:10: nfdump shows a 1:10 sampler and 10 x the packets and
    bytes; nfacctd renormalizes every key by 10, logs nothing and learns the
    three options templates (RFC report, sampling rate, statistics)."""
    cap, truth = capture
    with nfcapd(tmp_path / "nf") as nf_port, \
            nfacctd(tmp_path / "pm", renormalize=True) as pm:
        export(cap, [{"url": f"{scheme}://127.0.0.1:{nf_port}"},
                     {"url": f"{scheme}://127.0.0.1:{pm.port}"}],
               sampling_interval=RATE, sampling_mode=mode)
        pm.drain()
        logged = pm.log_since_start()
    packets, octets, seq_failures, samplers = nfdump_totals(tmp_path / "nf")
    assert samplers and all("packet interval: 1, packet space: 9" in s for s in samplers)
    assert (packets, octets) == (RATE * truth.packets, RATE * truth.octets)
    assert seq_failures == 0
    assert logged == "", logged[:2000]
    learned = {tid for tid, kind in pm.learned_templates() if kind == 1}
    assert learned == {templates.TID_SAMPLING, templates.TID_SAMPLING_RATE, templates.TID_STATS}
    flows = pm.flows()
    assert sum(p for p, _ in flows.values()) == RATE * truth.packets
    assert sum(b for _, b in flows.values()) == RATE * truth.octets


def _options_template_sets(msg, v9):
    """[(set id, template ids in it)] of the options template sets of a
    template message."""
    off, out = (20 if v9 else 16), []
    while off + 4 <= len(msg):
        set_id, length = struct.unpack_from("!HH", msg, off)
        if set_id == (1 if v9 else 3):
            out.append(struct.unpack_from("!H", msg, off + 4)[0])
        off += length
    return out


@pytest.mark.parametrize("scheme", ["ipfix", "netflow9"])
def test_one_options_template_per_set_and_the_rate_only_when_sampling(scheme):
    """Each options template has a set of its own (nfdump and nfacctd read
    only the first of a set); the sampling-rate template is there only when
    sampling 1:N with N > 1, so an unsampled export never shows a sampler."""
    v9 = scheme == "netflow9"
    plain = ENCODERS[scheme](EncoderConfig()).template_message()
    sampled = ENCODERS[scheme](EncoderConfig(sampling_interval=RATE)).template_message()
    assert _options_template_sets(plain, v9) == [templates.TID_SAMPLING, templates.TID_STATS]
    assert _options_template_sets(sampled, v9) == [
        templates.TID_SAMPLING, templates.TID_SAMPLING_RATE, templates.TID_STATS]
