#!/usr/bin/env bash
# Install everything, then run the whole test suite (unit, netns, integration, e2e).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --image  # the image test builds and runs the container image
exec .venv/bin/python -m pytest "$@"
