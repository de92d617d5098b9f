# xfrmid: `make demo` and `make test` are the two commands a new user runs, as root,
# on a fresh Debian-family machine. Both install what they need and are safe to
# run twice.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The second venv of CI's matrix: the oldest supported pyroute2 and dbus-fast, exactly.
VENV_FLOOR := .venv-floor
FLOORS := .ci/floor-constraints.txt
# The kernel tests that exercise pyroute2's and dbus-fast's internals, run again on the floors.
FLOOR_KERNEL_TESTS := test_links test_link_reaper test_addresses test_routes test_rules test_features \
	test_monitor_events test_monitor_overrun test_bus_api test_bus_bulk_cli
# libreswan 5.4, built from source for the real-pluto tests (Debian 12 ships 4.10):
# what its lib/ and programs/ need with the features turned off below.
LIBRESWAN_BUILD_DEPS := bison flex make libnss3-dev libnss3-tools libnspr4-dev libevent-dev libcap-ng-dev
# busybox-static: virtme-ng boots Debian's kernel (9p and virtio are modules there)
# through an initramfs it builds around a static busybox; without one it stops at once.
# network-manager: xfrmid beside it and its VPN plugin (tests/kernel/test_networkmanager.py),
# with libfaketime slowing its clock there: it gives a plugin 5 s to start, too few under emulation.
# python3-venv, python3-dev: the benchmarks' venv on the distribution's interpreter (make bench).
APT_PACKAGES := linux-image-amd64 qemu-system-x86 iproute2 iputils-ping kmod \
	dbus dbus-bin libsystemd-dev pkg-config gcc \
	systemd systemd-container util-linux man-db groff-base mandoc rpm rpmlint libreswan busybox-static \
	network-manager libfaketime python3-venv python3-dev \
	$(LIBRESWAN_BUILD_DEPS)
REPORTS := build/reports

.PHONY: all deps venv venv-floor venv-bench libreswan test test-host test-kernel test-floor test-crash test-restart test-service-unit test-network-managers demo clean help bench

all: help

help:
	@echo "make demo   run xfrmid in a throwaway VM and show what it does"
	@echo "make test   host tests, then all kernel tests in a throwaway VM"
	@echo "make deps   install the Debian packages the VM and the build need"
	@echo "make clean  remove build/ and the venv"

# Debian packages: installed only when one is missing, so a second run is quick.
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends $$missing; \
	fi

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' virtme-ng
	touch $@

venv: deps $(VENV)/.stamp

$(VENV_FLOOR)/.stamp: pyproject.toml $(FLOORS)
	$(PYTHON) -m venv $(VENV_FLOOR)
	$(VENV_FLOOR)/bin/python -m pip install -q --upgrade pip
	$(VENV_FLOOR)/bin/python -m pip install -q -c $(FLOORS) -e '.[test]'
	touch $@

venv-floor: deps $(VENV_FLOOR)/.stamp

# The benchmarks' venv: the daemon runs on the distribution's interpreter, as an
# installed package does (the development venv's may be a slower build: pyenv's
# default lacks the distribution's optimisations), with xfrmid's dependencies but
# not xfrmid, which the bench imports from the checkout. bench/README.md.
BENCH_PYTHON ?= /usr/bin/python3
VENV_BENCH := .venv-bench
$(VENV_BENCH)/.stamp: pyproject.toml
	$(BENCH_PYTHON) -m venv --clear $(VENV_BENCH)
	$(VENV_BENCH)/bin/python -m pip install -q --upgrade pip
	$(VENV_BENCH)/bin/python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
		print(*p["dependencies"], *p["optional-dependencies"]["test"], *p["optional-dependencies"]["bench"], sep="\n")' \
		> $(VENV_BENCH)/requirements.txt
	$(VENV_BENCH)/bin/python -m pip install -q -r $(VENV_BENCH)/requirements.txt
	touch $@

venv-bench: deps $(VENV_BENCH)/.stamp

# The newest versions pip gives (.venv), then the floors (.venv-floor).
test: venv venv-floor
	$(MAKE) test-host
	$(MAKE) test-kernel
	$(MAKE) test-floor

test-host:
	@mkdir -p $(REPORTS)
	$(VENV)/bin/xfrmid --version
	$(PY) -m pytest tests/host -q --junitxml=$(REPORTS)/host.xml

# libreswan 5.4 for the real-pluto tests, built once into build/ (kept while the
# tarball and the settings stay the same). LIBRESWAN_TARBALL: its source
# (default: shared/libreswan/libreswan-5.4.tar.xz in the nearest parent directory
# of the checkout that has it, i.e. ../shared). The programs are compiled for
# LIBRESWAN_PREFIX, which the VM links to build/libreswan-5.4/prefix.
LIBRESWAN_TARBALL ?=
LIBRESWAN_PREFIX := /run/xfrmid-libreswan-5.4
libreswan:
	tests/libreswan/build "$(LIBRESWAN_TARBALL)" build/libreswan-5.4 $(LIBRESWAN_PREFIX)

# One VM runs every kernel test; any failure or skip there fails the build.
test-kernel: libreswan
	@mkdir -p $(REPORTS)
	rm -f $(REPORTS)/kernel.xml
	XFRMID_VM_TIMEOUT=$${XFRMID_VM_TIMEOUT:-4800} tests/vm/run python -m pytest tests/kernel -q -p no:cacheprovider --junitxml=$(REPORTS)/kernel.xml
	$(PY) tests/vm/check_report.py $(REPORTS)/kernel.xml 40

# Host tests and the kernel tests of the dependencies' internals on the oldest supported
# versions (.ci/floor-constraints.txt), the VM running .venv-floor's Python libraries.
test-floor: venv venv-floor
	@mkdir -p $(REPORTS)
	$(VENV_FLOOR)/bin/xfrmid --version
	$(VENV_FLOOR)/bin/python -m pytest tests/host -q -p no:cacheprovider --junitxml=$(REPORTS)/host-floor.xml
	rm -f $(REPORTS)/kernel-floor.xml
	XFRMID_VM_VENV=$(VENV_FLOOR) XFRMID_VM_DIR=build/vm-floor tests/vm/run python -m pytest \
		$(patsubst %,tests/kernel/%.py,$(FLOOR_KERNEL_TESTS)) -q -p no:cacheprovider --junitxml=$(REPORTS)/kernel-floor.xml
	$(PY) tests/vm/check_report.py $(REPORTS)/kernel-floor.xml 40

# The crash test alone (it is part of `make test` too): 20 SIGKILLs under
# a two-client workload, a daemon start each (~8-16 min in the emulated VM).
test-crash: venv
	@mkdir -p $(REPORTS)
	XFRMID_VM_DIR=build/vm-crash tests/vm/run python -m pytest tests/kernel/test_crash.py -q -p no:cacheprovider --junitxml=$(REPORTS)/kernel-crash.xml
	$(PY) tests/vm/check_report.py $(REPORTS)/kernel-crash.xml 1

# The restart test (1,000 interfaces, 100 changed by hand while stopped) on
# its own; it is also part of test-kernel (~105 s in the VM: setup 30 s, daemon
# start with the repairs 50 s).
test-restart: venv
	@mkdir -p $(REPORTS)
	XFRMID_VM_DIR=build/vm-restart tests/vm/run python -m pytest tests/kernel/test_restart.py -q -p no:cacheprovider --junitxml=$(REPORTS)/kernel-restart.xml
	$(PY) tests/vm/check_report.py $(REPORTS)/kernel-restart.xml 1

# The shipped unit under real systemd (nspawn) in the VM, in a network
# namespace of its own; also part of `make test`.
test-service-unit: venv
	XFRMID_VM_DIR=build/vm-service-unit tests/vm/run python -m pytest tests/kernel/test_service_unit.py -q -p no:cacheprovider --junitxml=$(REPORTS)/kernel-service-unit.xml
	$(PY) tests/vm/check_report.py $(REPORTS)/kernel-service-unit.xml 9

# xfrmid beside Debian's systemd-networkd and NetworkManager (and its VPN plugin,
# which NetworkManager starts), each in a container under real systemd; also
# part of `make test`. What each action did: build/reports/network-managers/.
test-network-managers: venv
	@mkdir -p $(REPORTS)
	XFRMID_VM_DIR=build/vm-network-managers tests/vm/run python -m pytest tests/kernel/test_networkd.py tests/kernel/test_networkmanager.py -q -p no:cacheprovider --junitxml=$(REPORTS)/kernel-network-managers.xml
	$(PY) tests/vm/check_report.py $(REPORTS)/kernel-network-managers.xml 15

# The benchmarks beside their baselines in one VM (bench/README.md); build/reports/bench.json.
# BENCH_N / BENCH_SCALE shrink them (e.g. make bench BENCH_N=20 BENCH_SCALE=20).
# make bench-scale's own defaults, unless BENCH_N / BENCH_SCALE are given.
BENCH_SCALE_N := $(or $(BENCH_N),5000)
BENCH_SCALE_SCALE := $(or $(BENCH_SCALE),50000)
BENCH_N ?= 1000
BENCH_SCALE ?= 10000
# BENCH_ARGS passes more (e.g. BENCH_ARGS="--profile build/reports/profile --deadline 900").
# The host's load goes to bench-host.txt: the VM is emulated, its speed is the host's.
BENCH_ARGS ?=
bench: venv venv-bench
	@mkdir -p $(REPORTS)
	@echo "before: $$(date -u '+%F %T UTC') $$(uptime)" > $(REPORTS)/bench-host.txt
	XFRMID_VM_VENV=$${XFRMID_VM_VENV:-$(VENV_BENCH)} XFRMID_VM_DIR=$${XFRMID_VM_DIR:-build/vm-bench} XFRMID_VM_TIMEOUT=$${XFRMID_VM_TIMEOUT:-7200} XFRMID_VM_MEMORY=$${XFRMID_VM_MEMORY:-4G} \
		tests/vm/run python -m bench.run --n $(BENCH_N) --scale $(BENCH_SCALE) --out $(REPORTS)/bench.json $(BENCH_ARGS)
	@echo "after:  $$(date -u '+%F %T UTC') $$(uptime)" >> $(REPORTS)/bench-host.txt

# The scale run (bench/README.md): startup, latency, event storm and memory with
# 50,000 interfaces, create and delete of 5,000 in one call each; no hub rows.
# About ten minutes in the emulated VM (614 s on a quiet host): build/reports/bench-scale.json, -meta.json, -host.txt.
# Without IPv6 in its namespaces: with it, the kernel's link-up cost grows with the links
# already there, and preparing 50,000 alone takes hours (bench/harness.py, netns_add).
.PHONY: bench-scale
bench-scale: venv venv-bench
	@mkdir -p $(REPORTS)
	@echo "before: $$(date -u '+%F %T UTC') $$(uptime)" > $(REPORTS)/bench-scale-host.txt
	XFRMID_VM_VENV=$${XFRMID_VM_VENV:-$(VENV_BENCH)} XFRMID_VM_DIR=$${XFRMID_VM_DIR:-build/vm-bench-scale} \
		XFRMID_VM_TIMEOUT=$${XFRMID_VM_TIMEOUT:-43200} XFRMID_VM_MEMORY=$${XFRMID_VM_MEMORY:-8G} tests/vm/run python -m bench.run --only scale,create \
		--n $(BENCH_SCALE_N) --scale $(BENCH_SCALE_SCALE) --memory-target per-interface --ipv6 off \
		--out $(REPORTS)/bench-scale.json $(BENCH_ARGS)
	@echo "after:  $$(date -u '+%F %T UTC') $$(uptime)" >> $(REPORTS)/bench-scale-host.txt

demo: venv
	tests/vm/run examples/demo.sh

clean:
	rm -rf build $(VENV) $(VENV_FLOOR) $(VENV_BENCH) *.egg-info
