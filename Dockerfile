# outboxd image: built on Debian 12 with the same packages as scripts/deps.sh, the build steps of
# scripts/build.sh for the outboxd target alone. `make image` builds it with Podman (scripts/image.sh)
# and tests/scripts/image_test.sh runs it against PostgreSQL and Kafka.
# Its configuration (config/compose.toml) takes the addresses from the environment:
#   docker run -e OUTBOXD_PG_CONNINFO="host=db dbname=app user=outboxd" \
#              -e OUTBOXD_KAFKA_BOOTSTRAP=kafka:9092 outboxd:0.1.0
# (without them it exits 2 naming the missing variable); mount another file at
# /etc/outboxd/outboxd.toml to set more. The admin listener (/healthz, /readyz, /metrics) is on
# port 9464 of the container's address.
FROM debian:12 AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config libpq-dev librdkafka-dev libtoml11-dev \
      libspdlog-dev libcli11-dev nlohmann-json3-dev libcpp-httplib-dev libssl-dev \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the outboxd target needs: a change to the tests or the docs reuses this stage's layers.
COPY CMakeLists.txt ./
COPY cmake cmake
COPY examples examples
COPY schema schema
COPY sidecar sidecar
# The debug information is most of the binary (about 40 of 43 MB): left out, the symbols kept.
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DOUTBOXD_BUILD_TESTS=OFF \
    && cmake --build build --target outboxd \
    && strip --strip-debug build/outboxd

FROM debian:12-slim
# A fixed numeric user, so that a runtime can check it is not root (Kubernetes' runAsNonRoot).
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libpq5 librdkafka1 libspdlog1.10 libcpp-httplib0.11 ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 65532 --user-group --no-create-home --home-dir /nonexistent \
         --shell /usr/sbin/nologin outboxd
COPY --from=build /src/build/outboxd /usr/local/bin/outboxd
COPY config/compose.toml /etc/outboxd/outboxd.toml
USER 65532:65532
EXPOSE 9464
# outboxd's default --config is /etc/outboxd/outboxd.toml.
ENTRYPOINT ["/usr/local/bin/outboxd"]
CMD ["run"]
