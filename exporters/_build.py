"""cffi build script for flowprobe.exporters._enc (the C record encoder and
the JSON-lines formatter).

The cdef is the real exporters/encode.h plus `struct ft_record` (and the
end-reason enum) cut verbatim from probe/flowtable/flowtable.h, so tests and
benchmarks can build record arrays with this module alone; the sources are
the real .c files.
"""
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
FT_DIR = os.path.join(HERE, os.pardir, "probe", "flowtable")


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _ft_record_cdef():
    text = _read(os.path.join(FT_DIR, "flowtable.h"))
    m = re.search(r"^struct ft_record \{.*?^\};", text, re.S | re.M)
    if m is None:
        raise RuntimeError("struct ft_record not found in flowtable.h")
    return m.group(0)


# jsonl.c (JSON lines of `replay --json` / `run --json`, probe/sinks.py)
# lives in this module too: it reads the same struct ft_record arrays, and
# one extension keeps the record layout in one cdef.
ffibuilder = FFI()
ffibuilder.cdef(_ft_record_cdef() + "\n" + _read(os.path.join(HERE, "encode.h"))
                + "\n" + _read(os.path.join(HERE, "tlv.h"))
                + "\n" + _read(os.path.join(HERE, "udpsend.h"))
                + "\n" + _read(os.path.join(HERE, "jsonl.h")))
ffibuilder.set_source(
    "flowprobe.exporters._enc",
    '#include <stdint.h>\n#include <stddef.h>\n#include "flowtable.h"\n#include "encode.h"\n'
    '#include "tlv.h"\n#include "udpsend.h"\n#include "jsonl.h"\n',
    sources=[os.path.relpath(os.path.join(HERE, s))
             for s in ("encode.c", "tlv.c", "udpsend.c", "jsonl.c")],
    include_dirs=[HERE, os.path.normpath(FT_DIR)],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"],
)
