# syntax=docker/dockerfile:1
# The claimgate image: a build stage with the Rust toolchain, and a distroless runtime with the
# binary, CA certificates and nothing else (no shell, no package manager), running as non-root.
#   docker build -t claimgate .
#   docker run --rm -v "$PWD:/etc/claimgate:ro" claimgate check --config /etc/claimgate/gateway.toml
# deploy/image/build-offline.sh builds the same runtime image from a release binary without a
# registry or a Docker engine (README, "Deploy").

FROM rust:1.95-bookworm AS build
# cmake: Pingora's zlib-ng build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The registry and target caches survive between builds; the binary is copied out of them,
# without its debug line tables (most of its size; the symbols stay for backtraces).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin claimgate \
    && install -D -m 0755 target/release/claimgate /out/claimgate \
    && strip --strip-debug /out/claimgate

# glibc, libgcc and CA certificates; user and group 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="claimgate" \
      org.opencontainers.image.description="JWT-verifying, policy-enforcing reverse proxy on Pingora"
COPY --from=build /out/claimgate /usr/local/bin/claimgate
USER 65532:65532
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/claimgate"]
CMD ["run", "--config", "/etc/claimgate/config/gateway.toml", "--log-format", "json"]
