# syntax=docker/dockerfile:1
# Image of haproxy-nomad-connector: built on Debian bookworm, run on distroless cc-debian12
# (glibc, libgcc_s, libssl3, CA certificates; no shell) as the non-root user 65532.
#   docker build -t haproxy-nomad-connector --build-arg GIT_COMMIT="$(git rev-parse --short HEAD)" .
#   docker run --rm haproxy-nomad-connector --version
# CI lints this file with hadolint and checks that every shared library the binary needs is in
# the runtime base (scripts/check-image-libs.sh, which holds the base's list).

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# PCRE2 (the regex engine HAProxy uses, for checking regex domains) is compiled into the binary,
# so the runtime stage needs no libpcre2.
ENV PCRE2_SYS_STATIC=1 \
    CARGO_TERM_COLOR=never
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
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
COPY --from=builder /haproxy-nomad-connector /usr/local/bin/haproxy-nomad-connector
USER 65532:65532
# /healthz, /readyz, /metrics, /status (http.listen, default 0.0.0.0:4650).
EXPOSE 4650
ENTRYPOINT ["haproxy-nomad-connector"]
CMD ["run"]
