# flowscope: every target does its own set-up on a fresh Debian 12 machine (as root).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV    := .venv
PY      := $(VENV)/bin/python
KREL    := $(shell uname -r)
KBUILD  := /lib/modules/$(KREL)/build
APT_PKGS := python3-bpfcc python3-venv python3-dev iproute2 libbpf1 tmux librsvg2-bin fonts-dejavu-core nfdump tshark

.PHONY: help setup apt headers venv test lint bench demo screenshots clean

help: ## this list
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: apt headers venv ## install everything flowscope needs (idempotent)

apt: ## Debian packages (bcc's Python bindings, iproute2, libbpf, tmux, ...)
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "setup: installing Debian packages:$$missing"; \
	  apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

headers: ## kernel headers for BCC: Debian's linux-headers-amd64, linked in only when the kernel has none
	@if [ -e $(KBUILD)/include/linux/kconfig.h ] || [ -e $(KBUILD)/include/generated/autoconf.h ]; then exit 0; fi; \
	if [ -e /sys/kernel/kheaders.tar.xz ]; then exit 0; fi; \
	dpkg -s linux-headers-amd64 >/dev/null 2>&1 || { echo "setup: kernel $(KREL) has no headers; installing Debian's linux-headers-amd64"; \
	  apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-headers-amd64 >/dev/null; }; \
	arch=$$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -n 1); common=$${arch%-amd64}-common; \
	mkdir -p /lib/modules/$(KREL); \
	ln -sfn $$arch $(KBUILD); ln -sfn $$common /lib/modules/$(KREL)/source; \
	echo "setup: linked $(KBUILD) -> $$arch and /lib/modules/$(KREL)/source -> $$common"

venv: $(VENV)/.installed ## virtualenv from /usr/bin/python3 that sees Debian's bcc and nothing else of it

$(VENV)/.installed: pyproject.toml
	@[ -x $(PY) ] || { echo "setup: creating $(VENV) from /usr/bin/python3"; /usr/bin/python3 -m venv $(VENV); }
	@site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	mkdir -p $(VENV)/debian-bcc; ln -sfn /usr/lib/python3/dist-packages/bcc $(VENV)/debian-bcc/bcc; \
	echo "$(abspath $(VENV))/debian-bcc" > $$site/debian_bcc.pth
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

test: setup ## run the whole test suite (kernel tests need root; on CI nothing may skip)
	$(PY) -m pytest -q tests

lint: setup ## ruff and mypy
	$(VENV)/bin/ruff check flowscope tests
	$(VENV)/bin/ruff format --check flowscope tests
	$(VENV)/bin/mypy flowscope

demo: setup ## see it work: traffic in a namespace of its own, in the console (needs root)
	$(VENV)/bin/flowscope demo

bench: setup ## benchmarks as JSON lines
	$(VENV)/bin/flowscope bench --json

screenshots: setup ## SVG and PNG of every console screen (80x24, 160x48, dark, light) into screenshots/
	$(PY) -m tests.support.screenshots screenshots

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
