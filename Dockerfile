# syntax=docker/dockerfile:1
# sqlite2pg: build with the Rust toolchain, run from a small image as a non-root user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The bundled SQLite's build flags (memory per connection, for fleets).
COPY .cargo ./.cargo
# The profile keeps symbols (names in backtraces) and leaves DWARF out of the binary.
RUN cargo build --release --locked

FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin sqlite2pg
COPY --from=build /src/target/release/sqlite2pg /usr/local/bin/sqlite2pg
# Run with the bot's uid/gid (compose `user:`) so the daemon can add its triggers to the bot's
# SQLite file and create the -wal/-journal files next to it.
USER 10001:10001
EXPOSE 9187
ENTRYPOINT ["sqlite2pg"]
CMD ["run", "--metrics-addr", "0.0.0.0:9187"]
