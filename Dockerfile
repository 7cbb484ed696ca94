# outboxd image: built on Debian 12 with the same packages as scripts/deps.sh. Untested here (no
# Docker engine on the development machines); the build steps are those of scripts/build.sh.
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
COPY tests tests
COPY bench bench
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DOUTBOXD_BUILD_TESTS=OFF \
    && cmake --build build --target outboxd

FROM debian:12-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libpq5 librdkafka1 libspdlog1.10 libcpp-httplib0.11 ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --no-create-home outboxd
COPY --from=build /src/build/outboxd /usr/local/bin/outboxd
COPY config/outboxd.toml /etc/outboxd/outboxd.toml
USER outboxd
ENTRYPOINT ["/usr/local/bin/outboxd"]
CMD ["run", "--config", "/etc/outboxd/outboxd.toml"]
