# regclean inside the registry's own image.
#
#   docker build -t registry-regclean .                                   # on registry:2
#   docker build --build-arg REGISTRY_IMAGE=registry:3 -t registry-regclean:3 .
#   # with a binary built on the host instead of the compile stage:
#   RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu
#   docker build --build-arg REGCLEAN_BINARY=host -t registry-regclean .
#
# The image keeps the base's volume, port, config and default command; its entrypoint runs the
# configured clean (REGCLEAN_* variables, see docker/regclean-hook) before the registry serves,
# then execs the base's own /entrypoint.sh with the original arguments.

ARG REGISTRY_IMAGE=registry:2
ARG REGCLEAN_BINARY=build

# Compile stage: a static binary (no libc needed in the final image).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --locked --target x86_64-unknown-linux-gnu --bin regclean \
 && cp target/x86_64-unknown-linux-gnu/release/regclean /regclean

# A binary built on the host (see above); selected with --build-arg REGCLEAN_BINARY=host.
FROM scratch AS host
COPY target/x86_64-unknown-linux-gnu/release/regclean /regclean

FROM ${REGCLEAN_BINARY} AS binary

FROM ${REGISTRY_IMAGE}
ARG REGISTRY_IMAGE
COPY --from=binary /regclean /usr/local/bin/regclean
COPY docker/regclean-hook /usr/local/bin/regclean-hook
LABEL org.opencontainers.image.title="registry with regclean" \
      org.opencontainers.image.description="CNCF Distribution registry with regclean: safe tag/repository removal, retention and garbage collection" \
      org.opencontainers.image.source="https://github.com/regclean/regclean" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${REGISTRY_IMAGE}"
# The base's entrypoint is kept: the hook execs it. A new ENTRYPOINT resets the inherited CMD,
# so with no command the hook passes the base's own default config (registry:2's
# /etc/docker/registry/config.yml, or registry:3's /etc/distribution/config.yml).
ENTRYPOINT ["/usr/local/bin/regclean-hook", "/entrypoint.sh"]
CMD []
