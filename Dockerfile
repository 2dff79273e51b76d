# ragq: one image, every process (`ragq worker`, `ragq api`, `ragq scheduler`, `ragq sim-provider` ...).
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ragq-cli && cp target/release/ragq /usr/local/bin/ragq

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/ragq /usr/local/bin/ragq
USER 65534
ENTRYPOINT ["ragq"]
