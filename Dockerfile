# syntax=docker/dockerfile:1
# Image of haproxy-nomad-connector: built on Debian bookworm, run on distroless cc-debian12
# (glibc, libgcc_s, libssl3, CA certificates; no shell) as the non-root user 65532.
#   docker build -t haproxy-nomad-connector --build-arg GIT_COMMIT="$(git rev-parse --short HEAD)" .
#   docker run --rm haproxy-nomad-connector --version
# CI lints this file with hadolint and checks that every shared library the binary needs is in
# the runtime base (scripts/check-image-libs.sh, which holds the base's list).

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# Regex domains are checked with PCRE2, the engine HAProxy runs them with: the binary links
# Debian 12's libpcre2-8 (10.42, the one Debian's and the haproxytech Debian images' HAProxy
# link), not a newer bundled copy that would accept patterns HAProxy refuses (variable-length
# look-behind came in 10.43). The runtime stage gets the same library file.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpcre2-dev \
    && rm -rf /var/lib/apt/lists/*
ENV CARGO_TERM_COLOR=never
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY crates ./crates
COPY benches ./benches
# The build context has no .git (see .dockerignore): pass the commit for `--version`.
ARG GIT_COMMIT=""
ENV HNC_GIT_COMMIT=${GIT_COMMIT}
RUN cargo build --release --locked --bin haproxy-nomad-connector \
    && install -m 0755 target/release/haproxy-nomad-connector /haproxy-nomad-connector

FROM gcr.io/distroless/cc-debian12:nonroot
ARG GIT_COMMIT=""
LABEL org.opencontainers.image.title="haproxy-nomad-connector" \
      org.opencontainers.image.description="Keeps HAProxy in step with HashiCorp Nomad's native service discovery" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.documentation="README.md, section Deploy" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=builder /usr/lib/x86_64-linux-gnu/libpcre2-8.so.0 /usr/lib/x86_64-linux-gnu/libpcre2-8.so.0
COPY --from=builder /haproxy-nomad-connector /usr/local/bin/haproxy-nomad-connector
USER 65532:65532
# /healthz, /readyz, /metrics, /status (http.listen, default 0.0.0.0:4650).
EXPOSE 4650
ENTRYPOINT ["haproxy-nomad-connector"]
CMD ["run"]
