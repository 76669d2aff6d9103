"""Replay a synthetic capture with ground truth to pmacct's nfacctd 1.7.7
(the `print` plugin writing CSV) over IPFIX and NetFlow v9: nfacctd logs
nothing while it receives the whole export, learns every template (both
options templates included), and its totals per 5-tuple and ToS equal the
truth's."""
import subprocess
import sys

import pytest

import synth
from collectors import nfacctd
from flowprobe.exporters import templates

TEMPLATES = {(templates.TID_FLOW4, 0), (templates.TID_FLOW6, 0),
             (templates.TID_SAMPLING, 1), (templates.TID_STATS, 1)}


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    d = tmp_path_factory.mktemp("cap")
    path = str(d / "synth.pcap")
    truth = synth.generate(path, flows=8000, packets=40000, seed=16)
    return path, truth


def truth_counts(truth):
    """The truth on nfacctd's key (VLANs summed: it does not aggregate on them)."""
    out = {}
    for (_vlan, _ver, src, dst, sp, dp, proto, tos), v in truth.flows.items():
        key = (src, dst, sp, dp, proto, tos)
        p, b = out.get(key, (0, 0))
        out[key] = (p + v["packets"], b + v["octets"])
    return out


@pytest.mark.parametrize("scheme", ["ipfix", "netflow9"])
def test_replay_to_nfacctd_is_silent_and_exact(scheme, capture, tmp_path):
    """nfacctd logs nothing after start-up for the whole replay (templates
    refreshed every 64 messages), learns the flow and both options
    templates, and every 5-tuple carries the truth's packets and bytes."""
    cap, truth = capture
    with nfacctd(tmp_path / "nfacctd") as coll:
        proc = subprocess.run([sys.executable, "-m", "flowprobe", "replay", cap, "--export",
                               f"{scheme}://127.0.0.1:{coll.port}"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:] + "\n" + coll.diagnosis()
        coll.drain()
        logged = coll.log_since_start()
    assert logged == "", logged[:2000]
    learned = coll.learned_templates()
    assert learned == TEMPLATES
    got, want = coll.flows(), truth_counts(truth)
    assert sum(p for p, _ in got.values()) == truth.packets
    assert sum(b for _, b in got.values()) == truth.octets
    missing, extra = set(want) - set(got), set(got) - set(want)
    assert not missing and not extra, (sorted(missing)[:5], sorted(extra)[:5])
    bad = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not bad, list(bad.items())[:5]
