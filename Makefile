# Every target bootstraps .venv by itself: a fresh clone needs only python3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
PROTO_DIR := proto/unimeter/v1
PROTOS := $(wildcard $(PROTO_DIR)/*.proto)
PROTO_STAMP := $(PROTO_DIR)/.generated
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: all venv proto test test-fast lint run bench bench-quick clean

all: test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP)

$(PROTO_STAMP): $(STAMP) $(PROTOS)
	rm -f $(PROTO_DIR)/*_pb2*.py $(PROTO_DIR)/*_pb2*.pyi
	$(PY) -m grpc_tools.protoc -Iproto --python_out=proto --grpc_python_out=proto \
		--mypy_out=proto --mypy_grpc_out=proto $(PROTOS)
	touch $@

proto: $(PROTO_STAMP)

test: $(PROTO_STAMP)
	$(PY) -m pytest -q

lint: $(PROTO_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/buf lint

run: $(PROTO_STAMP)
	$(BIN)/unimeter serve --data-dir $${UNIMETER_DATA_DIR:-./data} --grpc-addr $${UNIMETER_GRPC_ADDR:-127.0.0.1:50051}

bench: $(PROTO_STAMP)
	$(PY) -m bench

bench-quick: $(PROTO_STAMP)
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) $(PROTO_DIR)/*_pb2*.py $(PROTO_DIR)/*_pb2*.pyi $(PROTO_STAMP)
