# The two commands: `make demo` and `make test`. Both create .venv if missing and install medfed
# with the CPU build of PyTorch (override TORCH=... to bring another build, e.g. for a GPU).
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.medfed-installed

.PHONY: demo test install clean proto browser

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --quiet --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install --quiet --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medfed run --out runs/demo

test: $(STAMP) browser
	$(PY) -m pytest -q

# The report's browser test renders report.html in headless Chromium: install Debian's chromium when
# we are root with apt-get; never fail (without it that test is skipped, saying why).
browser:
	command -v chromium >/dev/null || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null)) || true

clean:
	rm -rf runs .pytest_cache

# Dev-time only: regenerate the protobuf module from medfed.proto (the runtime needs no grpcio-tools;
# the gRPC service is registered by hand in transport/grpc_server.py, so no *_pb2_grpc.py is needed).
proto: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[proto]"
	cd medfed/transport/proto && ../../../$(PY) -m grpc_tools.protoc -I. --python_out=. medfed.proto
