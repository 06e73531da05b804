# Trainer / Spark image: Python 3.11 + Java 17 + ddp_kbit (CPU torch).
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps dataset-fashion-mnist \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/ddp_kbit
COPY . .
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir .
ENV PYSPARK_PYTHON=python3 PYSPARK_DRIVER_PYTHON=python3
ENTRYPOINT ["ddp-kbit"]
