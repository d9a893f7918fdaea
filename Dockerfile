# karkhana: one image for every part (gateway, API, edge agent, simulator).
#   docker build -t karkhana .
#   docker run --rm karkhana --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user owns the data directory; nothing runs as root.
RUN groupadd --system --gid 10001 karkhana \
    && useradd --system --uid 10001 --gid karkhana --home-dir /var/lib/karkhana \
       --shell /usr/sbin/nologin karkhana \
    && mkdir -p /var/lib/karkhana \
    && chown karkhana:karkhana /var/lib/karkhana

WORKDIR /opt/karkhana
COPY pyproject.toml README.md ./
COPY karkhana ./karkhana
COPY edge ./edge
COPY gateway ./gateway
COPY services ./services
COPY devices ./devices
RUN pip install . && rm -rf /opt/karkhana/build

# Relative paths (edge buffers, SQLite stores) land in the data volume.
WORKDIR /var/lib/karkhana
USER karkhana:karkhana
ENTRYPOINT ["karkhana"]
CMD ["--help"]
