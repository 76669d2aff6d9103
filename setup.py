"""Build flowprobe: Python package + C extensions compiled by cffi (API mode).

Each extension has its own build script (``_build.py``) that reads the real
.h file as the cdef and compiles the real .c files.
"""

import re
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
VERSION = re.search(r'^__version__ = "([^"]+)"',
                    (HERE / "__init__.py").read_text(), re.M).group(1)

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
        "probe/flowtable/_build.py:ffibuilder",
        "driver/_build.py:ffibuilder",
        "exporters/_build.py:ffibuilder",
        "driver/_ring_build.py:ffibuilder",
        "driver/_xdp_build.py:ffibuilder",
    ],
    entry_points={"console_scripts": ["flowprobe=flowprobe.probe.cli:main"]},
    zip_safe=False,
)
