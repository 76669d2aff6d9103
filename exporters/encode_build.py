"""cffi build script of flowprobe.exporters._encode (the exporters' C:
NetFlow/IPFIX data sets, ntopng's nDPI TLV payloads, the UDP transport's
batched sends, and the JSON lines of `--json`).

The cdef is the real headers, read verbatim: include/ft_records.h (struct
ft_record and its end reasons, shared with the flow engine, so that tests
and benchmarks can build record arrays with this module alone), then
exporters/encode.h, tlv.h, udpsend.h and jsonl.h. The sources are the real
.c files.
"""
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
INCLUDE = HERE.parent / "include"
SOURCES = ["encode.c", "tlv.c", "udpsend.c", "jsonl.c"]

ffibuilder = FFI()
ffibuilder.cdef((INCLUDE / "ft_records.h").read_text())
ffibuilder.cdef((HERE / "encode.h").read_text())
ffibuilder.cdef((HERE / "tlv.h").read_text())
ffibuilder.cdef((HERE / "udpsend.h").read_text())
ffibuilder.cdef((HERE / "jsonl.h").read_text())
ffibuilder.set_source(
    "flowprobe.exporters._encode",
    '#include <stdint.h>\n#include <stddef.h>\n'
    '#include "ft_records.h"\n#include "encode.h"\n#include "tlv.h"\n'
    '#include "udpsend.h"\n#include "jsonl.h"\n',
    sources=[str(HERE / s) for s in SOURCES],
    include_dirs=[str(HERE), str(INCLUDE)],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"],
)
