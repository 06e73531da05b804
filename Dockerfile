# Trainer / Spark image: Python 3.11 + Java 17 + ddp_kbit (CPU torch).
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps dataset-fashion-mnist \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/ddp_kbit
# dependencies first (a layer that survives source edits), torch pinned before anything needs it
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt
COPY . .
RUN pip install --no-cache-dir --no-deps .
ENV PYSPARK_PYTHON=python3 PYSPARK_DRIVER_PYTHON=python3
ENTRYPOINT ["ddp-kbit"]
