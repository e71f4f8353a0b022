# syntax=docker/dockerfile:1
# Unimeter in a container: one process, embedded storage in a volume.
#
#   docker build -t unimeter .
#   docker run -d --name unimeter -p 50051:50051 -p 9090:9090 -v unimeter-data:/var/lib/unimeter unimeter
#   docker exec unimeter unimeter status          # the CLI is in the image too
#
# Serve flags can follow the image name (`unimeter serve --partitions 128`) or come as UNIMETER_*
# environment variables. The node protocol (7001) is off unless UNIMETER_NODE_ADDR=0.0.0.0:7001.
# Shutdown drains in-flight calls for up to 10 s, then flushes: give `docker stop` a longer -t.

# ---- builder: generate the gRPC stubs, build the wheel and the native engine into a virtualenv ----
FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1

# The Rust toolchain of the native ingest engine (native/), from the official image at a pinned
# version, plus the C linker it needs. Both stay in this stage: the runtime gets the compiled module.
COPY --from=rust:1.95-slim /usr/local/cargo /usr/local/cargo
COPY --from=rust:1.95-slim /usr/local/rustup /usr/local/rustup
ENV CARGO_HOME=/usr/local/cargo RUSTUP_HOME=/usr/local/rustup PATH=/usr/local/cargo/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# Of the dev extras only grpcio-tools is needed (for protoc), at pyproject.toml's pin; it stays here.
RUN python -m venv /opt/tools && /opt/tools/bin/pip install grpcio-tools==1.85.1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto/ proto/
COPY service/ service/
COPY cluster_client/ cluster_client/
COPY node/ node/
COPY native/ native/

# The stubs must exist before the wheel is built: hatch packages proto/unimeter as `unimeter`.
# Same protoc invocation as `make proto`, minus the mypy stubs a runtime does not need.
RUN /opt/tools/bin/python -m grpc_tools.protoc -Iproto --python_out=proto --grpc_python_out=proto \
        proto/unimeter/v1/*.proto

# ./native builds with maturin at native/pyproject.toml's pin (cargo --release, Cargo.lock's versions).
RUN python -m venv /opt/unimeter \
    && /opt/unimeter/bin/pip install . ./native \
    && cd / && /opt/unimeter/bin/python -c "import unimeter.v1.alert_service_pb2_grpc, service.cli, unimeter_native"

# ---- runtime: the virtualenv, a non-root user, a data volume ----
FROM python:3.11-slim

RUN useradd --system --user-group --uid 10001 --home-dir /var/lib/unimeter --no-create-home \
        --shell /usr/sbin/nologin unimeter \
    && mkdir -p /var/lib/unimeter \
    && chown unimeter:unimeter /var/lib/unimeter

COPY --from=builder /opt/unimeter /opt/unimeter

ENV PATH=/opt/unimeter/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    UNIMETER_DATA_DIR=/var/lib/unimeter \
    UNIMETER_GRPC_ADDR=0.0.0.0:50051 \
    UNIMETER_HTTP_ADDR=0.0.0.0:9090

VOLUME /var/lib/unimeter
WORKDIR /var/lib/unimeter
# 50051: gRPC API; 7001: node protocol (when enabled); 9090: /healthz, /readyz, /metrics
EXPOSE 50051 7001 9090
USER unimeter

# Ready = recovered and serving. Python's standard library only: the image has no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9090/readyz', timeout=3).status != 200)"]

ENTRYPOINT ["unimeter"]
CMD ["serve"]
