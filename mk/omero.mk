# OMERO.fs driver. omero-py needs zeroc-ice 3.6.5, which has no Python 3.11 wheel on
# PyPI: scripts/build-ice-wheel.sh builds it once from the sdist (with two source fixes) and
# caches it outside the tree (${XDG_CACHE_HOME:-~/.cache}/assetfs/wheels), so only the first run
# on a machine pays the ~7 min compile. Then install the wheel, omero-py (the client stubs, the
# `omero` extra) and omero-dropbox (the real fsServerFS / fsServerMS the tests run against).
OMERO_STAMP := $(VENV)/.omero-installed
OMERO_PACKAGES := 'omero-py>=5.23,<6' 'omero-dropbox>=5.7,<6'

.PHONY: omero ice-wheel

ice-wheel: $(VENV)/.installed
	scripts/build-ice-wheel.sh $(PY)

omero: $(OMERO_STAMP)

$(OMERO_STAMP): $(VENV)/.installed scripts/build-ice-wheel.sh mk/omero.mk
	@echo "== OMERO.fs test peer: zeroc-ice 3.6.5 wheel (built once per machine, ~4-7 min), omero-py, omero-dropbox"
	wheel="$$(scripts/build-ice-wheel.sh $(PY) | tail -n1)" && \
	  $(PY) -m pip install -q "$$wheel" $(OMERO_PACKAGES)
	$(PY) -c 'import Ice, omero, omero_FS_ice, fsServerFS, fsServerMS'
	touch $@

TEST_DEPS += omero
