#!/usr/bin/env bash
# Drop-in replacement for the reference repository's scripts/rolling-update.sh: same name,
# same environment (ENV_REGION, default us), now a zero-downtime deploy with rollback.
# Copy it to scripts/rolling-update.sh in that repository; it expects rolling-update.toml
# (from config.example.toml) beside the repository's root and the tool installed in
# ROLLING_UPDATE_VENV (default: .venv at the root).
set -euo pipefail
cd "$(dirname "$0")/.."
export ENV_REGION="${ENV_REGION:-us}"
VENV="${ROLLING_UPDATE_VENV:-.venv}"
exec "$VENV/bin/python" -m rolling_update deploy --config "${ROLLING_UPDATE_CONFIG:-rolling-update.toml}" "$@"
