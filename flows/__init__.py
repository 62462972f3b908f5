"""Prefect flows, deployments and the command-line interface of city-audit."""

import os

# Offline by default: no Prefect telemetry (architecture: no calls to the outside at run time).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
