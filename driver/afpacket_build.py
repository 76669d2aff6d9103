"""cffi build script of flowprobe.driver._afpacket (TPACKET_V3 ring + filter).

The cdef is driver/afpacket.h read verbatim; the sources are afpacket.c (the
ring) and afpacket_filter.c (libpcap filter compilation). afpacket.c fills
struct ft_pkt arrays declared in include/ft_records.h; the cdef passes them
as void *, so the header is on the include path only. setup.py lists
"driver/afpacket_build.py:ffibuilder" in cffi_modules.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
INCLUDE = HERE.parent / "include"

ffibuilder = FFI()
ffibuilder.cdef((HERE / "afpacket.h").read_text())
ffibuilder.set_source(
    "flowprobe.driver._afpacket",
    "#include <stddef.h>\n#include <stdint.h>\n#include \"afpacket.h\"\n",
    sources=[str(HERE / "afpacket.c"), str(HERE / "afpacket_filter.c")],
    include_dirs=[str(HERE), str(INCLUDE)],
    libraries=["pcap"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror"],
)
