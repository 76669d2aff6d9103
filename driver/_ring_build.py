"""cffi build script for flowprobe.driver._ring (TPACKET_V3 ring + BPF).

The cdef is driver/ring.h read verbatim; the sources are afpacket.c (the
ring) and bpf.c (libpcap filter compilation). struct ft_pkt comes from
probe/flowtable/flowtable.h, included by afpacket.c. setup.py lists
"driver/_ring_build.py:ffibuilder" in cffi_modules.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FLOWTABLE = ROOT / "probe" / "flowtable"

ffibuilder = FFI()
ffibuilder.cdef((HERE / "ring.h").read_text())
ffibuilder.set_source(
    "flowprobe.driver._ring",
    "#include <stddef.h>\n#include <stdint.h>\n#include \"ring.h\"\n",
    sources=[str(HERE / "afpacket.c"), str(HERE / "bpf.c")],
    include_dirs=[str(HERE), str(FLOWTABLE)],
    libraries=["pcap"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror"],
)
