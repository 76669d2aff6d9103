"""cffi build script for flowprobe.driver._xdp (AF_XDP receive path).

The cdef is driver/afxdp.h read verbatim; the sources are afxdp_prog.c
(libbpf: the XDP program and its bpf_link) and afxdp.c (libxdp: UMEM and XSK
rings). struct ft_pkt comes from probe/flowtable/flowtable.h (afxdp.c).
setup.py lists "driver/_xdp_build.py:ffibuilder" in cffi_modules.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FLOWTABLE = ROOT / "probe" / "flowtable"

ffibuilder = FFI()
ffibuilder.cdef((HERE / "afxdp.h").read_text())
ffibuilder.set_source(
    "flowprobe.driver._xdp",
    "#include <stddef.h>\n#include <stdint.h>\n#include \"afxdp.h\"\n",
    sources=[str(HERE / "afxdp.c"), str(HERE / "afxdp_prog.c")],
    include_dirs=[str(HERE), str(FLOWTABLE)],
    libraries=["xdp", "bpf"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror"],
)
