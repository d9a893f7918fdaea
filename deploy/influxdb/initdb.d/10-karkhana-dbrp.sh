#!/bin/bash
# Runs once, when the influxdb container sets up an empty data volume (after the org, bucket
# and admin token from DOCKER_INFLUXDB_INIT_* exist). Maps the InfluxQL database of the same
# name onto the bucket (retention policy autogen, default), so that the API and Grafana's
# InfluxQL data source can query it. The gateway creates the same mapping when it is missing.
set -euo pipefail

influx v1 dbrp create \
    --org "${DOCKER_INFLUXDB_INIT_ORG}" \
    --bucket-id "${DOCKER_INFLUXDB_INIT_BUCKET_ID}" \
    --db "${DOCKER_INFLUXDB_INIT_BUCKET}" \
    --rp autogen \
    --default
