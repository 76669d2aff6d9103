"""The live reader's export wiring: one observation domain and one file per reader."""
from flowprobe.config import load_config_text
from flowprobe.probe.reader import export_items, per_reader_url


def test_each_reader_gets_its_own_observation_domain():
    """Export items carry base + reader index as the observation domain."""
    cfg = load_config_text("export:\n  - url: ipfix://127.0.0.1:4739\n"
                           "    observation_domain: 40\n", "t")
    assert [i.observation_domain for i in export_items(cfg, ["netflow9://h"], 3)] == [43, 4]


def test_each_reader_writes_its_own_export_file():
    """File destinations get the reader index before the extension (readers
    sharing one file would rename over each other's); others are shared."""
    assert per_reader_url("ipfix+file:///var/lib/f/flows.ipfix", 3) == \
        "ipfix+file:///var/lib/f/flows.r3.ipfix"
    assert per_reader_url("ipfix+file:///tmp/x", 0) == "ipfix+file:///tmp/x.r0"
    assert per_reader_url("ipfix+file:///a.b/c", 1) == "ipfix+file:///a.b/c.r1"
    assert per_reader_url("ipfix://127.0.0.1:4739", 1) == "ipfix://127.0.0.1:4739"
    cfg = load_config_text("export:\n  - url: ipfix+file:///tmp/f.ipfix\n", "t")
    urls = {export_items(cfg, [], i)[0].url for i in range(2)}
    assert urls == {"ipfix+file:///tmp/f.r0.ipfix", "ipfix+file:///tmp/f.r1.ipfix"}
