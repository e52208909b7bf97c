# sdbot on an NVIDIA GPU. See README, "Run it in Docker". Build: docker build -t sdbot .
# The base image brings CUDA and a CUDA build of torch; pip keeps that torch (it satisfies torch>=2.4).
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

# Extras to install, e.g. "ray" for SDBOT_WORKERS=ray (compose.yaml builds with it).
ARG EXTRAS=""

# Model weights are downloaded once into the HF_HOME volume, not into the image; the database and the
# images live in the /data volume.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    SDBOT_DATABASE_PATH=/data/sdbot.sqlite3 \
    SDBOT_OUTPUT_DIR=/data/images \
    SDBOT_METRICS_PORT=9100 \
    SDBOT_METRICS_HOST=0.0.0.0

RUN useradd --create-home --uid 10001 --user-group sdbot \
    && mkdir -p /data /cache/huggingface \
    && chown sdbot:sdbot /data /cache/huggingface

WORKDIR /app
COPY pyproject.toml README.md ./
COPY sdbot ./sdbot
COPY generation ./generation
COPY bot ./bot
COPY migrations ./migrations
RUN pip install ".${EXTRAS:+[$EXTRAS]}"

USER sdbot
VOLUME ["/data", "/cache/huggingface"]
EXPOSE 9100

# 200 only while the gateway is connected, a worker is up and the database answers. The first start
# downloads the weights: the start period leaves time for that.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/healthz', timeout=4)"]

# A clean stop (SIGTERM) lets the running batch finish or go back to the queue.
STOPSIGNAL SIGTERM
CMD ["sdbot", "run"]
