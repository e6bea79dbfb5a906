# syntax=docker/dockerfile:1
# graygate operator image: a static (musl) binary on a distroless base, running as a non-root user.
#
#   docker build --build-arg GRAYGATE_GIT_REV=$(git rev-parse --short=12 HEAD) -t graygate:dev .
#
# The same binary is the kubectl plugin: copy it out as kubectl-graygate onto your PATH.

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
ARG GRAYGATE_GIT_REV=unknown
ENV GRAYGATE_GIT_REV=${GRAYGATE_GIT_REV} \
    CARGO_PROFILE_RELEASE_STRIP=symbols
# Cache mounts keep the crates.io registry and build artefacts between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl -p graygate --bin graygate \
 && cp target/x86_64-unknown-linux-musl/release/graygate /graygate \
 && /graygate --version

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /graygate /usr/local/bin/graygate
# distroless "nonroot": uid/gid 65532, matching the chart's securityContext.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/graygate"]
CMD ["run"]
