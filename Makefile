# assetfs set-up, demo and tests. Everything installs from nothing on a Debian machine.
#   make demo   mount the sample asset tree through omni.client's file: provider and show it working
#   make test   install what the tests need and run the whole suite
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := fuse3 libfuse3-dev pkg-config gcc g++ ninja-build curl patch strace python3-dev python3-venv \
	attr rsync
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-packages venv demo test test-core test-model lint bench clean

setup: system-packages venv

# $(call apt_install,PACKAGES): install those of PACKAGES that are missing (one apt run).
define apt_install
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

system-packages:
	$(call apt_install,$(APT_PACKAGES))

# pyfuse3 comes first, as a wheel built (once, cached) with the patches of scripts/patches/
# against libfuse 3.17.2 (scripts/build-pyfuse3-wheel.sh); pip then takes it as installed.
$(VENV)/.installed: pyproject.toml scripts/build-pyfuse3-wheel.sh scripts/build-libfuse.sh \
		$(wildcard scripts/patches/pyfuse3-*.patch)
	@echo "== virtualenv $(VENV)"
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@echo "== pyfuse3 with kernel passthrough, FOPEN_NOFLUSH, FOPEN_CACHE_DIR (built once, cached)"
	wheel="$$(scripts/build-pyfuse3-wheel.sh $(PY) | tail -n1)" && \
	  $(PY) -m pip install -q --force-reinstall --no-deps "$$wheel"
	@echo "== assetfs and its dependencies (pip install -e '.[dev]')"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: setup
	bash scripts/demo.sh

test: setup
	$(VENV)/bin/ruff check assetfs tests scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q -rs

# The quick suite: the core, memory://, Nucleus on file: and the conformance suite for those
# (no Ice or Go builds). `make test` stays the whole suite.
CORE_TESTS := tests/test_core.py tests/test_journal.py tests/test_namespace.py \
	tests/test_writeback.py tests/test_coherence.py tests/test_passthrough.py \
	tests/test_loopwatch.py tests/test_memory_mount.py tests/test_conformance.py \
	tests/test_options.py tests/test_subscription.py tests/test_concurrency_helpers.py \
	tests/test_desktop.py tests/test_trash.py

test-core: setup
	$(VENV)/bin/ruff check assetfs tests scripts
	$(VENV)/bin/pytest -q -rs -m "not omero and not vsphere" $(CORE_TESTS)

lint: venv
	$(VENV)/bin/ruff check assetfs tests scripts
	$(VENV)/bin/mypy

# A soak of the model test (tests/test_model.py): 100,000 operations per mount variant.
test-model: setup
	ASSETFS_MODEL_OPS=100000 $(VENV)/bin/pytest -q -rs tests/test_model.py

# assetfs against Debian's rclone mount of the same tree and direct access (installs rclone
# if missing; the tests never need it)
bench: setup
	$(call apt_install,rclone)
	$(PY) scripts/bench_vs_rclone.py

clean:
	rm -rf $(VENV) build *.egg-info

# Backend-specific set-up (test peers, wheels) lives in mk/*.mk; each adds its targets to TEST_DEPS.
TEST_DEPS :=
-include mk/*.mk
test: $(TEST_DEPS)
