"""Build flowprobe: Python package + C extensions compiled by cffi (API mode).

One naming scheme per C component: ``NAME.{c,h}`` is built by
``NAME_build.py`` (listed in cffi_modules) into the extension ``_NAME``. Each
build script reads the real .h files as the cdef (include/ft_records.h, the
packet and record structs shared by the driver, the engine and the encoder,
where the module needs those types) and compiles the real .c files.
"""

import re
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
VERSION = re.search(r'^__version__ = "([^"]+)"',
                    (HERE / "__init__.py").read_text(), re.M).group(1)


class BuildPy(build_py):
    """The package's root is the repository's root (package_dir "." below),
    so setuptools would install this script as flowprobe/setup.py: leave it
    out of the package."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if (m[0], m[1]) != ("flowprobe", "setup")]


setup(
    name="flowprobe",
    version=VERSION,
    description="Passive flow-export probe for Linux (C hot paths via cffi)",
    python_requires=">=3.11",
    package_dir={"flowprobe": "."},
    packages=[
        "flowprobe",
        "flowprobe.probe",
        "flowprobe.probe.flowtable",
        "flowprobe.driver",
        "flowprobe.exporters",
        "flowprobe.exporters.transports",
        "flowprobe.config",
        "flowprobe.collector",
    ],
    package_data={
        "flowprobe": ["include/*.h"],
        "flowprobe.config": ["flowprobe.yaml"],
        "flowprobe.probe": ["data/*.pcap"],
        "flowprobe.probe.flowtable": ["*.h", "*.c"],
        "flowprobe.driver": ["*.h", "*.c"],
        "flowprobe.exporters": ["*.h", "*.c"],
    },
    setup_requires=["cffi>=1.15"],
    install_requires=["cffi>=1.15", "pyyaml", "structlog", "ipfix", "pyroute2", "prometheus-client",
                      "pyzmq"],
    extras_require={"test": ["pytest", "hypothesis", "atheris"]},
    cffi_modules=[
        "probe/flowtable/flowtable_build.py:ffibuilder",
        "driver/pcapfile_build.py:ffibuilder",
        "driver/afpacket_build.py:ffibuilder",
        "driver/afxdp_build.py:ffibuilder",
        "exporters/encode_build.py:ffibuilder",
    ],
    entry_points={"console_scripts": ["flowprobe=flowprobe.probe.cli:main"]},
    cmdclass={"build_py": BuildPy},
    zip_safe=False,
)
