# One image for every service in docker-compose.yml: migrate, api, worker-cpu, worker-gpu, beat, flower
# and optuna-dashboard. torch stays pinned in each install step (DESIGN.md: a loose torch requirement
# lets pip pick another build). PyPI's Linux torch wheel brings its own CUDA libraries, so the gpu worker
# needs no CUDA base image: only the host's NVIDIA driver and container toolkit.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SOCE_DATA_DIR=/var/lib/soce \
    HF_HOME=/var/lib/soce/hf \
    HF_HUB_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

WORKDIR /opt/soce
# torch alone first: the largest layer, not rebuilt when our code changes
RUN pip install torch==2.13.0
COPY pyproject.toml README.md ./
COPY soce/ soce/
COPY evaluators/ evaluators/
COPY optimizer/ optimizer/
COPY workers/ workers/
COPY api/ api/
COPY migrations/ migrations/
# flower and optuna-dashboard run from this image too, on the same celery, optuna and psycopg
RUN pip install torch==2.13.0 . flower==2.2.0 optuna-dashboard==0.21.0

# Named volumes mounted on these folders start out owned by the user the services run as.
RUN useradd --create-home --uid 1000 soce \
    && mkdir -p /var/lib/soce/soups /checkpoints \
    && chown -R soce:soce /var/lib/soce /checkpoints
USER soce
WORKDIR /home/soce
EXPOSE 8000
CMD ["soce", "--help"]
