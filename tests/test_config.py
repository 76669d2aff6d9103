"""Config: YAML into frozen dataclasses; every error has its path and line."""

import dataclasses
import subprocess
import sys

import pytest
import yaml

from flowprobe.config import (DEFAULT_CONFIG_PATH, EXPORT_SCHEMES, Config, ConfigError,
                              ExportConfig, apply_overrides, default_config, load_config,
                              load_config_text)
from flowprobe.config.schema import parse_cpulist, parse_interfaces


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "t.yaml")
    return info.value.messages


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowprobe", *args],
                          capture_output=True, text=True, timeout=60)


def test_shipped_yaml_equals_defaults():
    """Loading the documented config file gives exactly the built-in defaults."""
    assert load_config(DEFAULT_CONFIG_PATH) == default_config() == Config()


def test_shipped_yaml_documents_every_key():
    """Every section key is set in the shipped file; export item keys are shown."""
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    for f in dataclasses.fields(Config):
        assert f.name in data
        if f.name == "export":
            continue
        section = getattr(Config(), f.name)
        assert set(data[f.name]) == {g.name for g in dataclasses.fields(section)}
    text = DEFAULT_CONFIG_PATH.read_text()
    for g in dataclasses.fields(ExportConfig):
        assert f"#     {g.name}: " in text or f"#   - {g.name}: " in text, g.name


def test_empty_file_gives_defaults():
    """An empty document or empty sections take every default."""
    assert load_config_text("", "e") == Config()
    assert load_config_text("flow:\nexport:\n", "e") == Config()


def test_values_are_typed_and_frozen():
    """Ints given for float keys become floats; objects cannot be mutated."""
    cfg = load_config_text("flow:\n  idle_timeout_s: 5\n", "t")
    assert cfg.flow.idle_timeout_s == 5.0 and isinstance(cfg.flow.idle_timeout_s, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.flow.max_flows = 1  # type: ignore[misc]


def test_unknown_key_names_path_line_and_valid_keys():
    """An unknown key is an error with its dotted path, line and the valid keys."""
    (msg,) = errors_of("flow:\n  max_flows: 10\n  idle_timeout: 5\n")
    assert msg.startswith("flow.idle_timeout (line 3): unknown key 'idle_timeout'")
    assert "idle_timeout_s" in msg and "max_flows" in msg


def test_bad_type_message():
    """A non-number for a positive float names the key, line, expectation and value."""
    (msg,) = errors_of("# comment\nflow:\n  idle_timeout_s: abc\n")
    assert msg == "flow.idle_timeout_s (line 3): expected a positive number, got 'abc'"


def test_all_errors_collected():
    """Validation reports every problem, not just the first."""
    msgs = errors_of(
        "flow:\n  max_flows: 0\n  bogus: 1\n"
        "logging:\n  level: loud\n"
        "capture:\n  busy_poll: 'yes'\n  snaplen: [1]\n"
        "nope: {}\n")
    assert len(msgs) == 6
    assert msgs[0].startswith("flow.max_flows (line 2): expected an integer from 1 to")
    assert msgs[1].startswith("flow.bogus (line 3): unknown key")
    assert msgs[2] == "logging.level (line 5): unknown 'loud' (expected: debug, info, warning, error)"
    assert msgs[3] == "capture.busy_poll (line 7): expected true or false, got 'yes'"
    assert msgs[4].startswith("capture.snaplen (line 8): expected an integer")
    assert msgs[5].startswith("nope (line 9): unknown key 'nope'")


def test_bad_export_scheme_lists_valid_ones():
    """An unknown export URL scheme is an error listing every valid scheme."""
    (msg,) = errors_of("export:\n  - url: ipfix://127.0.0.1:4739\n"
                       "  - url: udpp://127.0.0.1:4739\n    mtu: 1400\n")
    assert msg.startswith("export[1].url (line 3): unknown scheme 'udpp'")
    assert "(expected: " + ", ".join(EXPORT_SCHEMES) + ")" in msg


def test_export_items_and_shorthand():
    """Export items take defaults; a bare URL string is shorthand for {url: URL}."""
    cfg = load_config_text("export:\n  - ipfix+file:///tmp/x.ipfix\n"
                           "  - {url: 'netflow9://127.0.0.1', mtu: 1200}\n", "t")
    first, second = cfg.export
    assert first == ExportConfig(url="ipfix+file:///tmp/x.ipfix")
    assert (second.scheme, second.host, second.port, second.mtu) == ("netflow9", "127.0.0.1", 2055, 1200)
    assert errors_of("export:\n  - mtu: 1400\n") == ["export[0].url (line 2): missing required key"]


def test_cross_field_check_has_line():
    """A frame size that does not divide the block size is reported with a line."""
    (msg,) = errors_of("capture:\n  snaplen: 128\n  frame_size: 3008\n")
    assert msg.startswith("capture.frame_size (line 3): 3008 does not divide")


def test_cpulist_and_interface_lists():
    """cpus takes Linux cpulist syntax; interfaces are comma-separated."""
    assert parse_cpulist("0-2,5, 7") == [0, 1, 2, 5, 7]
    assert parse_interfaces("a, b,a") == ["a", "b"]
    with pytest.raises(ConfigError) as info:
        load_config_text("supervisor:\n  cpus: 3-1\n  workers: 0\n", "t")
    assert [m.split(" (")[0] for m in info.value.messages] == ["supervisor.cpus",
                                                             "supervisor.workers"]


def test_invalid_yaml_is_a_config_error():
    """YAML syntax errors become ConfigError with a line, not a yaml exception."""
    (msg,) = errors_of("flow: {max_flows: [\n")
    assert "invalid YAML" in msg and "(line " in msg


def test_overrides_validated_like_the_file():
    """Command-line overrides go through the same checks and are tagged as such."""
    cfg = apply_overrides(Config(), {"flow.idle_timeout_s": 5.0, "flow.max_flows": None})
    assert cfg.flow.idle_timeout_s == 5.0 and cfg.flow.max_flows == Config().flow.max_flows
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), {"flow.max_flows": 0})
    assert info.value.messages[0].startswith("flow.max_flows (command line): expected an integer")


def test_to_dict_round_trips():
    """The normalized dict, dumped as YAML, loads back to the same config."""
    cfg = load_config_text("export: [ipfix://127.0.0.1:4739]\nflow: {max_flows: 1000}\n", "t")
    assert load_config_text(yaml.safe_dump(cfg.to_dict()), "again") == cfg


def test_config_check_bad_file_exits_2_without_traceback(tmp_path):
    """`flowprobe config check` on a bad file: exit 2, each error named with key and line."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("flow:\n  idle_timeout_s: abc\nexport:\n  - url: udpp://x\n")
    proc = run_cli("config", "check", str(bad))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "flow.idle_timeout_s (line 2)" in proc.stderr
    assert "export[0].url (line 4)" in proc.stderr
    assert proc.stdout == ""


def test_config_check_missing_file_exits_2(tmp_path):
    """An unreadable config file is a one-line config error."""
    proc = run_cli("config", "check", str(tmp_path / "absent.yaml"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "No such file" in proc.stderr


def test_config_check_good_file_prints_normalized(tmp_path):
    """A good file prints the full normalized config as YAML, exit 0."""
    good = tmp_path / "good.yaml"
    good.write_text("flow:\n  idle_timeout_s: 5\n")
    proc = run_cli("config", "check", str(good))
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    expected = Config().to_dict()
    expected["flow"]["idle_timeout_s"] = 5.0
    assert printed == expected


@pytest.mark.parametrize("expr, pcap_error", [
    ("tcp port eighty and", "unknown port 'eighty'"),
    ("tcp and", "syntax error"),
    ("port 99999", "illegal port number 99999"),
])
def test_config_check_compiles_the_filter(tmp_path, expr, pcap_error):
    """`config check` compiles capture.filter with libpcap (Ethernet): a filter
    it refuses is exit 2 with the key, its line and libpcap's message; `run`
    with the same file reports the same line, before touching an interface."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"flow:\n  idle_timeout_s: 5\ncapture:\n  filter: \"{expr}\"\n")
    line = f"{bad}: capture.filter (line 4): "
    proc = run_cli("config", "check", str(bad))
    assert proc.returncode == 2 and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert line in proc.stderr and pcap_error in proc.stderr
    run = run_cli("run", "-i", "fpnone0", "-c", str(bad))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr == proc.stderr


@pytest.mark.parametrize("expr", ["udp and vlan 100", "vlan 100 and udp",
                                  "host 198.18.0.1 and (udp or icmp6)",
                                  "ether host 02:00:00:00:00:01", "not ip6"])
def test_config_check_accepts_good_filters(tmp_path, expr):
    """Expressions a live handle takes pass the check (no optimizer refusal of
    VLAN tests, which only a live handle compiles to the kernel's metadata)."""
    good = tmp_path / "good.yaml"
    good.write_text(f"capture:\n  filter: \"{expr}\"\n")
    proc = run_cli("config", "check", str(good))
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["capture"]["filter"] == expr
