# CPU image: API, CPU workers and beat. GPU workers use Dockerfile.gpu.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KRONOS_DATA_DIR=/data

WORKDIR /app

# Dependencies first, so code changes reuse this layer. The PyTorch CPU index serves
# torch==2.13.0+cpu; without it pip would take PyPI's CUDA build (several GB) for a CPU box.
COPY requirements.txt ./
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt

COPY pyproject.toml README.md ./
COPY model ./model
COPY kronos_jobs ./kronos_jobs
COPY api ./api
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 kronos \
    && mkdir -p /data && chown kronos /data

USER kronos
VOLUME ["/data"]
EXPOSE 8000
CMD ["kronos-jobs", "api"]
