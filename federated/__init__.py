"""Federated training with Flower: client partitions, the ClientApp, the ServerApp and a simulated run."""

import os

# Flower reads its switch when first imported (this package imports it), Ray when it starts: no usage reports.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
