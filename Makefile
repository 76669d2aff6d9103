# flowprobe: make deps | build | test | run | bench | bench-live | bench-flood | bench-dpi | deb | clean
# Works on a fresh Debian 12 machine as root (or with sudo).
#
# Debian packages go in with tools/apt-install.sh (no Recommends, no test
# daemon left enabled); Python packages go into the project's own virtual
# environment $(VENV), never into the system Python.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
PYTEST_ARGS ?=

APT_PACKAGES := build-essential python3-dev python3-venv python3-pip libpcap-dev clang \
	libclang-rt-14-dev softflowd nfdump pmacct tshark tcpreplay netsniff-ng tcpdump \
	iproute2 ethtool libxdp-dev libbpf-dev pkg-config \
	dpkg-dev help2man lintian debootstrap systemd systemd-container acl \
	libndpi-dev libndpi-bin
# What the venv needs before setup.py can run (cffi builds the extensions);
# the rest comes from setup.py's install_requires and its "test" extra.
BUILD_DEPS := 'setuptools>=64' wheel 'cffi>=1.15'
# Everything the C extensions are built from: a change rebuilds them.
C_SOURCES := setup.py $(wildcard */*_build.py */*/*_build.py \
	*/*.c */*.h */*/*.c */*/*.h)
# The package's Python (the work tree is the flowprobe package).
PY_PACKAGE := *.py probe driver exporters config collector

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_ROOT_USER_ACTION := ignore

.PHONY: all deps apt-deps build test run bench bench-imix bench-live bench-flood bench-dpi interop-ntopng deb clean distclean

all: build

apt-deps:
	@tools/apt-install.sh $(APT_PACKAGES)

# The venv is made once; `make distclean` removes it.
$(VENV)/.deps: setup.py | apt-deps
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(BUILD_DEPS)
	touch $@

deps: apt-deps $(VENV)/.deps

# Editable install: the venv's flowprobe is this work tree, C built in place;
# byte-compiled as the .deb's py3compile does (start-up: ~0.1 s less where
# PYTHONDONTWRITEBYTECODE is set and nothing would cache it).
$(VENV)/.built: $(VENV)/.deps $(C_SOURCES)
	$(PY) -m pip install -q --no-build-isolation -e '.[test]'
	$(PY) -m compileall -q $(PY_PACKAGE)
	touch $@

build: deps $(VENV)/.built

test: build
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

run: build
	$(SUDO) $(PY) tools/demo.py

# dist/flowprobe_<version>_<arch>.deb (packaging/build-deb.sh; README "The appliance package")
deb: apt-deps
	packaging/build-deb.sh dist

bench: build
	$(PY) bench/run.py

# the IMIX replay-export part of `make bench` alone (bench/imix.py)
bench-imix: build
	$(PY) bench/run.py --only imix

bench-live: build
	$(PY) bench/live.py

# random-source UDP flood into `run --workers 2` and softflowd (README "Exporting")
bench-flood: build
	$(PY) bench/flood.py

# application labels against ndpiReader 4.2's on $(FLOWPROBE_CORPUS)/ndpi-sample
# (README "Application identification"); without FLOWPROBE_CORPUS it says how
# to set it and skips. BENCH_DPI_ARGS=--check fails below the 99% goal.
bench-dpi: build
	$(PY) bench/dpi_accuracy.py $(BENCH_DPI_ARGS)

# a real ntopng fed over ZeroMQ (README "Feeding ntopng"): replay totals and
# live flows. NTOPNG = an ntopng 5.2.1 source folder with its binary already
# built by the operator; this project never builds ntopng.
interop-ntopng: build
	@if [ -z "$(NTOPNG)" ]; then echo "interop-ntopng: give NTOPNG=/path/to/ntopng-5.2.1 (a folder holding a built ntopng binary; README, Feeding ntopng)" >&2; exit 2; fi
	@if [ ! -x "$(NTOPNG)/ntopng" ]; then echo "interop-ntopng: no ntopng binary in $(NTOPNG) (README, Feeding ntopng)" >&2; exit 2; fi
	$(SUDO) $(PY) bench/ntopng_interop.py --ntopng "$(NTOPNG)"

clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis bench/out bench/results
	find . -path ./$(VENV) -prune -o -name __pycache__ -prune -exec rm -rf {} +
	find probe driver exporters -name '*.so' -delete
	find . -path ./$(VENV) -prune -o \( -name 'flowprobe.*.c' -o -name '*.o' \) -exec rm -f {} +
	rm -f $(VENV)/.built

distclean: clean
	rm -rf $(VENV)
