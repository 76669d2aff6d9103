# flowprobe: make deps | build | test | run | bench | clean
# Works on a fresh Debian 12 machine as root (or with sudo).

PYTHON ?= python3
PIP    := $(PYTHON) -m pip
SUDO   := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
PYTEST_ARGS ?=

APT_PACKAGES := build-essential python3-dev python3-pip libpcap-dev clang \
	libclang-rt-14-dev softflowd nfdump tshark tcpreplay netsniff-ng tcpdump \
	iproute2 ethtool libxdp-dev libbpf-dev pkg-config \
	dpkg-dev help2man lintian debootstrap systemd systemd-container
# Build requirements, setup.py's install_requires and the "test" extra.
PY_DEPS := 'setuptools>=64' wheel 'cffi>=1.15' pyyaml structlog ipfix pyroute2 prometheus-client \
	pytest hypothesis atheris
PY_IMPORTS := setuptools, wheel, cffi, yaml, structlog, ipfix, pyroute2, prometheus_client, pytest, hypothesis, atheris

export DEBIAN_FRONTEND := noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_ROOT_USER_ACTION := ignore
# A Debian system Python refuses pip installs without this (PEP 668).
export PIP_BREAK_SYSTEM_PACKAGES := 1

.PHONY: all deps build test run bench bench-live deb clean

all: build

deps:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg -s $$p 2>/dev/null | grep -q '^Status: install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "apt-get install:" $$missing; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@$(PYTHON) -c "import $(PY_IMPORTS)" 2>/dev/null || $(PIP) install -q $(PY_DEPS)

build: deps
	$(PIP) install -q -e . --no-build-isolation

test: deps build
	$(PYTHON) -m pytest -q tests $(PYTEST_ARGS)

run: deps build
	$(SUDO) $(PYTHON) -m flowprobe.probe.demo

# dist/flowprobe_<version>_<arch>.deb (packaging/build-deb.sh; README "The appliance package")
deb: deps
	packaging/build-deb.sh dist

bench: deps build
	$(PYTHON) bench/run.py

bench-live: deps build
	$(PYTHON) bench/live.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis bench/out bench/results
	find . -name __pycache__ -prune -exec rm -rf {} +
	find probe driver exporters -name '*.so' -delete
	find . -name 'flowprobe.*.c' -delete -o -name '*.o' -delete
