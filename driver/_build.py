"""cffi build script for flowprobe.driver._pcap (the capture-file reader).

The cdef is driver/pcapfile.h read verbatim; the sources are the real .c
files. setup.py lists "driver/_build.py:ffibuilder" in cffi_modules.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FLOWTABLE = ROOT / "probe" / "flowtable"

ffibuilder = FFI()
ffibuilder.cdef((HERE / "pcapfile.h").read_text())
ffibuilder.set_source(
    "flowprobe.driver._pcap",
    "#include <stddef.h>\n#include <stdint.h>\n#include \"pcapfile.h\"\n",
    sources=[str(HERE / "pcapfile.c")],
    include_dirs=[str(HERE), str(FLOWTABLE)],
    libraries=["pcap"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror"],
)
