# syntax=docker/dockerfile:1
# The engine image: build with the pinned toolchain, run as a non-root user on
# a slim Debian. Lua scripts and migrations are compiled into the binary.

FROM rust:1.95-bookworm AS builder
# The commit for seckill_build_info (.git is not in the build context):
#   docker build --build-arg SECKILL_GIT_SHA=$(git rev-parse --short=12 HEAD) .
ARG SECKILL_GIT_SHA=unknown
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds; the binary is
# copied out because the target mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin seckill \
    && cp target/release/seckill /usr/local/bin/seckill

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin seckill
COPY --from=builder /usr/local/bin/seckill /usr/local/bin/seckill
USER seckill:seckill
ENV SECKILL_BIND=0.0.0.0:8080 \
    SECKILL_LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["seckill"]
CMD ["serve"]
