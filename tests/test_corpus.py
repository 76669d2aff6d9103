"""Real captures replay: no crash, no hang, no leak (ASan+UBSan build of
the C engine), and conservation holds on each.

The real-world captures come from FLOWPROBE_CORPUS (tests/support/corpus.py);
without it their tests skip visibly. The sanitizer replay and the parser
fuzz always run, on seeded synthetic captures (malformed frames included),
and on the corpus too when there is one."""
import os
import pathlib
import shutil
import subprocess

import pytest

import corpus
from flowprobe.driver.pcapfile import CaptureFileError
from test_flowtable import assert_conserved, run

ROOT = pathlib.Path(__file__).resolve().parents[1]
CAPTURES = corpus.captures()
C_DIR = ROOT / "tests" / "c"


@corpus.needs_corpus
def test_corpus_is_present():
    """FLOWPROBE_CORPUS, when set, names a folder that holds captures."""
    assert CAPTURES, f"no .pcap/.pcapng under {corpus.ENV}={corpus.root()}"


@pytest.mark.parametrize("path", corpus.params(CAPTURES),
                         ids=lambda p: p.name if p else "no-corpus")
def test_corpus_capture_conserves_packets(path):
    """Packets in emitted flows == accepted; read == accepted + skipped."""
    try:
        records, stats = run([path])
    except CaptureFileError:
        pytest.fail(f"{path.name}: reader refused a capture libpcap reads")
    assert_conserved(records, stats)


@pytest.fixture(scope="module")
def sanitizer_build(tmp_path_factory):
    if not shutil.which("clang"):
        pytest.fail("clang is required for the sanitizer build (make deps installs it)")
    out = tmp_path_factory.mktemp("cbuild")
    subprocess.run(["make", "-s", "-C", str(C_DIR), f"OUT={out}"], check=True)
    return out


def replay_clean_under_sanitizers(build, files, *options, binary="ft_replay_san"):
    """tests/c/ft_replay.c built with ASan+UBSan (or `binary`) replays every
    file with `options`: exit 0 and one " ok" line per file."""
    proc = subprocess.run([str(build / binary), *options, *map(str, files)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0"})
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert len(lines) == len(files)
    assert all(line.endswith(" ok") for line in lines), [l for l in lines if not l.endswith(" ok")]


def test_captures_under_asan_ubsan(sanitizer_build, synthetic_captures):
    """The pure-C replay of every capture (synthetic, and the corpus when
    there is one) runs clean under ASan+UBSan."""
    replay_clean_under_sanitizers(sanitizer_build, [*synthetic_captures, *CAPTURES])


def test_unfinished_flushes_under_asan_ubsan(sanitizer_build, synthetic_captures):
    """A flush after every batch, left unfinished (a small pending buffer,
    one handful of records collected): the next batch's ft_ingest() must
    finish it before it looks a flow up, since the flush unlinks no flow
    until all are emitted (expire.c). Clean under ASan+UBSan, packets
    conserved, every flow and nDPI state released."""
    replay_clean_under_sanitizers(sanitizer_build, [*synthetic_captures, *CAPTURES],
                                  "-f", "1", "-r", "128", "-m", "16384")


@pytest.mark.parametrize("binary", ["ft_replay_san", "ft_replay_tsan"])
def test_prefault_helper_under_sanitizers(sanitizer_build, synthetic_captures, binary):
    """With the slab mapped ahead by a helper thread (replay's prefault;
    these builds ask it every 16 KiB of flows, 64 KiB ahead, so it runs
    beside the table all along) every capture replays clean under
    ASan+UBSan and under TSan, packets conserved, the helper joined at
    ft_free()."""
    replay_clean_under_sanitizers(sanitizer_build, [*synthetic_captures, *CAPTURES[:50]],
                                  "-P", "-m", "400000", binary=binary)


def test_parser_fuzz_short_run(sanitizer_build, synthetic_captures, tmp_path):
    """libFuzzer on the parser, the table and the nDPI stage behind it
    finds nothing in a short CI run."""
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for i, p in enumerate([*synthetic_captures, *CAPTURES[:40]]):  # packet bytes
        data = p.read_bytes()[24:24 + 1500]
        (seeds / f"s{i}").write_bytes(bytes([i % 9]) + data)
    proc = subprocess.run([str(sanitizer_build / "fuzz_parse"), "-max_total_time=20",
                           "-max_len=2048", "-seed=1", f"-artifact_prefix={tmp_path}/", str(seeds)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Done" in proc.stderr
