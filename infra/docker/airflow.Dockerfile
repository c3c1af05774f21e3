# syntax=docker/dockerfile:1
# Airflow 3 for CityOS: the official apache/airflow image plus the cityos package, because DAG
# tasks call CityOS library code (the DAG files stay thin, see ARCHITECTURE.md), plus a Java 17
# runtime and the Spark jar set for tasks that run Spark on the lake.
#
# Airflow runs behind CityOS's compatibility patches (cityos/airflow.py): the compose services start
# as `python -m cityos.airflow <airflow args>`, and infra/docker/airflow/airflow, first on PATH,
# sends every other `airflow ...` (the image entrypoint's db check, migration and user creation,
# healthchecks) the same way.
#
# Build from the repository root:
#   docker build -f infra/docker/airflow.Dockerfile -t cityos-airflow:local .
ARG AIRFLOW_VERSION=3.2.2

FROM maven:3.9-eclipse-temurin-17 AS jars
WORKDIR /src
COPY infra/jars/ infra/jars/
COPY infra/bin/ensure-jars infra/bin/ensure-jars
RUN CITYOS_CACHE_DIR=/cache bash infra/bin/ensure-jars spark && rm -rf /cache/m2

FROM eclipse-temurin:17-jre AS jre

FROM apache/airflow:${AIRFLOW_VERSION}-python3.11
ARG AIRFLOW_VERSION
ENV JAVA_HOME=/opt/java/openjdk \
    PATH=/opt/java/openjdk/bin:$PATH
COPY --from=jre /opt/java/openjdk /opt/java/openjdk

COPY --chown=airflow:0 pyproject.toml README.md requirements.lock /opt/cityos/
COPY --chown=airflow:0 cityos/ /opt/cityos/cityos/
COPY --chown=airflow:0 geo/ /opt/cityos/geo/
COPY --chown=airflow:0 streaming/ /opt/cityos/streaming/
COPY --chown=airflow:0 nlq/ /opt/cityos/nlq/
COPY --chown=airflow:0 infra/jars/ /opt/cityos/infra/jars/
COPY --chown=airflow:0 infra/bin/ /opt/cityos/infra/bin/
COPY --from=jars --chown=airflow:0 /cache/jars /opt/airflow/cityos-cache/jars
COPY --chown=airflow:0 infra/docker/airflow/lock_constraints.py /opt/cityos/infra/docker/airflow/
COPY --chown=airflow:0 --chmod=755 infra/docker/airflow/airflow /opt/cityos/bin/airflow

USER airflow
# Pinning apache-airflow alongside the extra package is what the Airflow image docs prescribe, so
# pip cannot up- or downgrade Airflow while resolving cityos's dependencies. (Checked: apache-airflow
# [fab] 3.2.2 and the cityos dependencies resolve together for Python 3.11.) What the base image
# lacks (pyspark, torch, geopandas, SUMO, ...) is pinned to requirements.lock; what it has stays
# at the versions Airflow's constraints gave it (see lock_constraints.py).
RUN python /opt/cityos/infra/docker/airflow/lock_constraints.py /opt/cityos/requirements.lock \
        > /tmp/cityos-constraints.txt \
 && pip install --no-cache-dir -c /tmp/cityos-constraints.txt \
        "apache-airflow==${AIRFLOW_VERSION}" -e /opt/cityos \
 && rm /tmp/cityos-constraints.txt \
 && python -c "import cityos.airflow"

# The patched `airflow` first on PATH (the real console script stays where the image put it).
ENV PATH=/opt/cityos/bin:$PATH

ENV CITYOS_CACHE_DIR=/opt/airflow/cityos-cache \
    CITYOS_DATA_DIR=/opt/shared/data
