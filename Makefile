# Two commands do all set-up on a fresh clone: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-deps lint typecheck bench fuzz fuzz-atheris clean

$(STAMP): pyproject.toml setup.py hwbridge.pth
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	# an editable install leaves out hwbridge.pth (a wheel has it): put it in by hand
	cp hwbridge.pth "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m bridge.demo

lint: $(STAMP)
	$(BIN)/ruff check bridge drivers sim hil tests bench fuzz setup.py _hwbridge_serial_hook.py
	$(BIN)/mypy

# Debian packages the kernel-interface tiers need (umockdev emulates /dev/i2c-*, /dev/spidev*,
# /dev/gpiochip* and a usbfs device; libusb serves USB devices through pyusb).
# Installed only when running as root with apt-get and they are missing; otherwise that tier
# skips and says why.
TEST_DEBS := umockdev gir1.2-umockdev-1.0 python3-gi libusb-1.0-0 gcc libc6-dev
test-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    ! dpkg -s $(TEST_DEBS) >/dev/null 2>&1; then \
	  (apt-get install -y -q $(TEST_DEBS) || \
	   (apt-get update -q && apt-get install -y -q $(TEST_DEBS))) >/dev/null || \
	  echo "test-deps: could not install $(TEST_DEBS); the umockdev tier will skip"; \
	fi

test: $(STAMP) lint test-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python -m bench

fuzz: $(STAMP)
	HWBRIDGE_FUZZ=long $(BIN)/python -m pytest -q -p no:cacheprovider tests -k "fuzz or hypothesis"

# Coverage-guided fuzzing with atheris (not part of `make test`, not run by CI): the decoder
# and a whole session, FUZZ_TIME seconds each; corpora grow in fuzz/corpus/ (seeded on the
# first run); a crashing input is kept in fuzz/artifacts/.
FUZZ_TIME ?= 60
fuzz-atheris: $(STAMP)
	@$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/python -m pip install -q atheris || true
	@if ! $(BIN)/python -c 'import atheris' 2>/dev/null; then \
	  echo "fuzz-atheris: atheris could not be installed for $$($(BIN)/python -V) on this"; \
	  echo "machine (it needs a wheel or clang with libFuzzer); the harnesses still run"; \
	  echo "without it in make test (tests/test_atheris_harness.py)."; exit 0; fi; \
	for h in decoder session; do \
	  mkdir -p fuzz/corpus/$$h fuzz/artifacts && \
	  $(BIN)/python -m fuzz.atheris_$$h fuzz/corpus/$$h -max_total_time=$(FUZZ_TIME) \
	    -artifact_prefix=fuzz/artifacts/$$h- -print_final_stats=1 || exit 1; \
	done

clean:
	rm -rf $(VENV) build *.egg-info
