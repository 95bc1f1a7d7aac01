# pinstream worker image: build with the Rust toolchain, run on a small non-root base.
#   docker build -t pinstream .
#   docker run --rm pinstream --help
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
RUN cargo build --release --locked --bin pinstream \
 && strip target/release/pinstream

# distroless/cc: glibc and CA certificates, no shell, runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/pinstream /usr/local/bin/pinstream
USER nonroot
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/pinstream"]
CMD ["run", "--log-format=json", "--metrics-addr=0.0.0.0:9464"]
