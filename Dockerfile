# The floodgate responder as a container image.
#
#   docker build --build-arg FLOODGATE_GIT_COMMIT=$(git rev-parse HEAD) -t floodgate .
#   docker run -v "$PWD/floodgate.toml:/etc/floodgate/floodgate.toml:ro" floodgate
#
# The policy is mounted at /etc/floodgate/floodgate.toml (FLOODGATE_CONFIG),
# or baked into an image of your own with one line after a FROM of this one:
#
#   COPY floodgate.toml /etc/floodgate/floodgate.toml
#
# The runtime stage is Debian slim with CA certificates, the binary and a
# non-root user (uid 10001); nothing in it runs a shell. No container
# engine runs on the project's machines, so scripts/verify-image.sh checks
# this stage another way: it builds the same root filesystem with
# debootstrap and runs the binary in it as uid 10001 (see the README).

# The workspace's toolchain: rust-version in Cargo.toml is the minimum,
# this is the release it is built and tested with.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

# The dependency recipe: the manifests and lock file, with every target
# (benches and examples included) as a skeleton.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# The dependencies, compiled in a layer of their own: rebuilt only when a
# manifest or Cargo.lock changes, and reusable from a registry cache.
RUN cargo chef cook --release --locked --recipe-path recipe.json \
    -p floodgate-responder --bin floodgate
COPY . .
# Without .git in the context, --version names the commit given here.
ARG FLOODGATE_GIT_COMMIT=unknown
RUN FLOODGATE_GIT_COMMIT=${FLOODGATE_GIT_COMMIT} \
    cargo build --release --locked -p floodgate-responder --bin floodgate \
    && install -D target/release/floodgate /out/floodgate

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 floodgate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/floodgate --shell /usr/sbin/nologin floodgate \
    && install -d -o 10001 -g 10001 /var/lib/floodgate \
    && install -d /etc/floodgate
COPY --from=builder /out/floodgate /usr/local/bin/floodgate
USER 10001:10001
# The file ledger and alert state (`[responder] state_dir`, relative by
# default) land here.
WORKDIR /var/lib/floodgate
ENV FLOODGATE_CONFIG=/etc/floodgate/floodgate.toml
# /healthz and /metrics, when `[responder] listen` is 0.0.0.0:9464.
EXPOSE 9464
# /healthz is 503 until the first cycle has finished.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["floodgate", "healthcheck"]
ENTRYPOINT ["floodgate"]
CMD ["run"]
