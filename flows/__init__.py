"""Prefect flows, deployments and the command-line interface of city-audit."""

import os

# Offline by default: no Prefect telemetry (architecture: no calls to the outside at run time).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Prefect's temporary server takes 4-5 s on an idle 2-core machine (12-13 s the first time, when it
# migrates a new database) and 15-40 s or more on a busy one; its own default deadline of 20 s made
# runs fail on busy machines. A deliberate setting is kept.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
