"""cffi build script of the flow engine, flowprobe.probe.flowtable._flowtable
(out-of-line API mode).

The cdef is the real headers, read from disk: include/ft_records.h (packets
and records, shared with the drivers and the encoder), then flowtable.h (the
engine's API). The sources are the real .c files; dpi.c links libndpi
(application identification), whose headers stay out of the cdef. setup.py names this file
in ``cffi_modules``.
"""
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
INCLUDE = HERE.parents[1] / "include"
SOURCES = ["flowtable.c", "expire.c", "parse.c", "dpi.c"]
# nDPI 4.2 (libndpi-dev): its headers are included as system headers so
# that -Werror applies to our code only; nothing of nDPI is in the cdef.
NDPI_INCLUDE = "/usr/include/ndpi"
CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-isystem", NDPI_INCLUDE]

ffibuilder = FFI()
ffibuilder.cdef((INCLUDE / "ft_records.h").read_text())
ffibuilder.cdef((HERE / "flowtable.h").read_text())
ffibuilder.set_source(
    "flowprobe.probe.flowtable._flowtable",
    '#include <stdint.h>\n#include <stddef.h>\n'
    '#include "ft_records.h"\n#include "flowtable.h"\n',
    sources=[str(HERE / s) for s in SOURCES],
    include_dirs=[str(HERE), str(INCLUDE)],
    extra_compile_args=CFLAGS,
    libraries=["ndpi"],
)
