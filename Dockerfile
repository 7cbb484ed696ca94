# outboxd image: built on Debian 12 with the same packages as scripts/deps.sh. Untested here (no
# Docker engine on the development machines); the build steps are those of scripts/build.sh.
# Its configuration (config/compose.toml) takes the addresses from the environment:
#   docker run -e OUTBOXD_PG_CONNINFO="host=db dbname=app user=outboxd" \
#              -e OUTBOXD_KAFKA_BOOTSTRAP=kafka:9092 outboxd
# (without them it exits 2 naming the missing variable); mount another file at
# /etc/outboxd/outboxd.toml to set more.
FROM debian:12 AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config libpq-dev librdkafka-dev libtoml11-dev \
      libspdlog-dev libcli11-dev nlohmann-json3-dev libcpp-httplib-dev libgtest-dev libgmock-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY cmake cmake
COPY sidecar sidecar
COPY schema schema
COPY config config
COPY tests tests
COPY bench bench
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DOUTBOXD_BUILD_TESTS=OFF \
    && cmake --build build --target outboxd

FROM debian:12-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libpq5 librdkafka1 libspdlog1.10 libcpp-httplib0.11 ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --no-create-home outboxd
COPY --from=build /src/build/outboxd /usr/local/bin/outboxd
COPY config/compose.toml /etc/outboxd/outboxd.toml
USER outboxd
# outboxd's default --config is /etc/outboxd/outboxd.toml.
ENTRYPOINT ["/usr/local/bin/outboxd"]
CMD ["run"]
