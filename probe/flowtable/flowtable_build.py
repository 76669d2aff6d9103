"""cffi build script of the flow engine, flowprobe.probe.flowtable._flowtable
(out-of-line API mode).

The cdef is the real headers, read from disk: include/ft_records.h (packets
and records, shared with the drivers and the encoder), then flowtable.h (the
engine's API). The sources are the real .c files. setup.py names this file
in ``cffi_modules``.
"""
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
INCLUDE = HERE.parents[1] / "include"
SOURCES = ["flowtable.c", "expire.c", "parse.c"]
CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror"]

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
)
