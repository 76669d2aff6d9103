"""cffi build script of the flow engine (out-of-line API mode).

The cdef is the real header, read from disk; the sources are the real .c
files. setup.py names this file in ``cffi_modules``.
"""
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = ["flowtable.c", "parse.c"]
CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror"]

ffibuilder = FFI()
ffibuilder.cdef((HERE / "flowtable.h").read_text())
ffibuilder.set_source(
    "flowprobe.probe.flowtable._ft",
    '#include <stdint.h>\n#include <stddef.h>\n#include "flowtable.h"\n',
    sources=[str(HERE / s) for s in SOURCES],
    include_dirs=[str(HERE)],
    extra_compile_args=CFLAGS,
)
