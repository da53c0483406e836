# echovlm-server on CPU.
#
#   docker build -t echovlm-server .
#   # a checkpoint directory on the host, mounted read-only:
#   docker run -p 8080:8080 -v /models/EchoVLM:/models/EchoVLM:ro echovlm-server --model /models/EchoVLM
#   # or a Hugging Face Hub id, downloaded into a cache volume on first start:
#   docker run -p 8080:8080 -v hf-cache:/home/echovlm/.cache/huggingface echovlm-server --model org/name
#
# Without arguments it serves the tiny random-weight demo checkpoint baked into the image.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p echovlm-server \
    && cp target/release/echovlm-server /usr/local/bin/echovlm-server

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin echovlm \
    && mkdir -p /home/echovlm/.cache/huggingface /models \
    && chown -R echovlm:echovlm /home/echovlm/.cache
COPY --from=builder /usr/local/bin/echovlm-server /usr/local/bin/echovlm-server
COPY --from=builder /src/fixtures/models/tiny-echovlm /models/tiny-echovlm
USER echovlm
ENV HF_HOME=/home/echovlm/.cache/huggingface
VOLUME ["/home/echovlm/.cache/huggingface"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["echovlm-server", "--host", "0.0.0.0", "--port", "8080"]
CMD ["--model", "/models/tiny-echovlm"]
