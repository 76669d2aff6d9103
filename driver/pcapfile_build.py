"""cffi build script of flowprobe.driver._pcapfile (the capture-file reader).

The cdef is driver/pcapfile.h read verbatim; the sources are pcapfile.c (the
API), pcapfile_mmap.c (classic pcap, mapped) and pcapfile_libpcap.c
(everything else). They fill struct ft_pkt arrays declared in
include/ft_records.h; the cdef passes them as void *, so the header is on
the include path only. setup.py lists "driver/pcapfile_build.py:ffibuilder"
in cffi_modules.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
INCLUDE = HERE.parent / "include"
SOURCES = ["pcapfile.c", "pcapfile_mmap.c", "pcapfile_libpcap.c"]

ffibuilder = FFI()
ffibuilder.cdef((HERE / "pcapfile.h").read_text())
ffibuilder.set_source(
    "flowprobe.driver._pcapfile",
    "#include <stddef.h>\n#include <stdint.h>\n#include \"pcapfile.h\"\n",
    sources=[str(HERE / s) for s in SOURCES],
    include_dirs=[str(HERE), str(INCLUDE)],
    libraries=["pcap"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror"],
)
