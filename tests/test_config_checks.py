"""Config checks of `flowprobe run`: which reload changes need new readers."""
from flowprobe.config import Config, load_config_text
from flowprobe.probe.config_checks import needs_new_rings


def test_reload_classification():
    """Filter, timeouts and exporters reload in place; ring geometry,
    interfaces, workers, CPUs and the table's DPI settings need new readers."""
    base = Config()
    inplace = load_config_text("capture:\n  filter: udp\nflow:\n  idle_timeout_s: 3\n"
                               "export: [ipfix://127.0.0.1:1]\n", "t")
    assert not needs_new_rings(base, inplace)
    for text in ("capture:\n  block_count: 8\n", "capture:\n  interface: x\n",
                 "supervisor:\n  workers: 3\n", "supervisor:\n  cpus: '1'\n",
                 "flow:\n  max_flows: 10\n", "flow:\n  dpi: false\n",
                 "flow:\n  dpi_max_flows: 10\n"):
        assert needs_new_rings(base, load_config_text(text, "t")), text
