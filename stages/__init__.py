"""Pipeline stages: one module per DAG stage, each run as ``python -m stages.<name>``."""
