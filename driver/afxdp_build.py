"""cffi build script of flowprobe.driver._afxdp (AF_XDP receive path).

The cdef is driver/afxdp.h read verbatim; the sources are afxdp_prog.c
(libbpf: the XDP program and its bpf_link) and afxdp.c (libxdp: UMEM and XSK
rings). afxdp.c fills struct ft_pkt arrays declared in include/ft_records.h;
the cdef passes them as void *, so the header is on the include path only.
setup.py lists "driver/afxdp_build.py:ffibuilder" in cffi_modules.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
INCLUDE = HERE.parent / "include"

ffibuilder = FFI()
ffibuilder.cdef((HERE / "afxdp.h").read_text())
ffibuilder.set_source(
    "flowprobe.driver._afxdp",
    "#include <stddef.h>\n#include <stdint.h>\n#include \"afxdp.h\"\n",
    sources=[str(HERE / "afxdp.c"), str(HERE / "afxdp_prog.c")],
    include_dirs=[str(HERE), str(INCLUDE)],
    libraries=["xdp", "bpf"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror"],
)
