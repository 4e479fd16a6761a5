# crmsync: one command for the demo, one for the tests, one for the demo on a
# real Tryton. All create the venvs and install what is missing; a stamp per
# pyproject.toml hash (and per Tryton pin list) keeps reruns fast.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
HASH   := $(shell sha1sum pyproject.toml | cut -c1-12)
STAMP_RUN  := $(VENV)/.installed-run-$(HASH)
STAMP_TEST := $(VENV)/.installed-test-$(HASH)
# Tryton (the real CRM the tests run against) lives in its own venv so its
# dependencies never conflict with ours; the stamp is keyed by the pin list.
# It is an order-only prerequisite of the test install: reinstalling Tryton
# must not force a reinstall of crmsync.
TRYTON_VENV := .venv-tryton
TRYTON_PKGS := trytond==8.2.* trytond-party==8.2.* trytond-company==8.2.* \
	trytond-sale-opportunity==8.2.* trytond-party-relationship==8.2.*
TRYTON_HASH := $(shell echo '$(TRYTON_PKGS)' | sha1sum | cut -c1-12)
STAMP_TRYTON := $(TRYTON_VENV)/.installed-$(TRYTON_HASH)
PYTEST_ARGS ?=
DEMO_ARGS ?=
DEMO_TRYTON_ARGS ?=
# bench/ may not exist yet on a fresh clone; ruff fails on missing paths.
LINT_PATHS := $(wildcard src tests bench)

.PHONY: demo demo-tryton test lint bench install install-test install-tryton clean

demo: $(STAMP_RUN)
	@mkdir -p demo
	cd demo && ../$(PY) -m crmsync.demo $(DEMO_ARGS)

# The same story against a real Tryton 8.2 server (from $(TRYTON_VENV)), in demo-tryton/:
# trytond-admin builds the database once, later runs reuse it.
demo-tryton: $(STAMP_RUN) $(STAMP_TRYTON)
	@mkdir -p demo-tryton
	cd demo-tryton && ../$(PY) -m crmsync.demo.tryton --tryton-venv ../$(TRYTON_VENV) \
		$(DEMO_TRYTON_ARGS)

test: $(STAMP_TEST)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

lint: $(STAMP_TEST)
	$(VENV)/bin/ruff check $(LINT_PATHS)

bench: $(STAMP_RUN)
	$(PY) bench/run.py $(BENCH_ARGS)

install: $(STAMP_RUN)
install-test: $(STAMP_TEST)
install-tryton: $(STAMP_TRYTON)

$(PY):
	$(PYTHON) -m venv $(VENV)

# The test install includes the runtime one, so it satisfies the demo too.
$(STAMP_RUN): $(PY)
	@if [ -f $(STAMP_TEST) ]; then touch $@; else echo "installing crmsync into $(VENV)"; \
		$(PY) -m pip install -q --disable-pip-version-check -e . && touch $@; fi

$(STAMP_TEST): $(PY) | $(STAMP_TRYTON)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@ $(STAMP_RUN)

$(STAMP_TRYTON):
	@test -x $(TRYTON_VENV)/bin/python || $(PYTHON) -m venv $(TRYTON_VENV)
	$(TRYTON_VENV)/bin/python -m pip install -q --disable-pip-version-check \
		$(foreach p,$(TRYTON_PKGS),'$(p)')
	@touch $@

clean:
	rm -rf $(VENV) demo demo-tryton build src/*.egg-info .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
