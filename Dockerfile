# A small static image: the binary built for musl, on a distroless base, running as non-root.
FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev cmake make perl clang
WORKDIR /src
COPY . .
# Without the `embedded` feature: the controller and the agent only, no emulator, sandbox or demo.
RUN cargo build --release --locked -p uami --no-default-features --bin uami-controller \
 && strip target/release/uami-controller

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/release/uami-controller /usr/local/bin/uami-controller
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/uami-controller"]
CMD ["run"]
