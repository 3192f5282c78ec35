#!/usr/bin/env bash
# Runs inside the new conda env, from the project root (Snakemake's working directory).
set -euo pipefail
pip install -e .
pip install --no-deps -r requirements-nodeps.txt
