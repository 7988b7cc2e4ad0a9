#!/usr/bin/env bash
# The test suite. Extra arguments go to pytest, e.g. scripts/test.sh -k pipeline
source "$(dirname "$0")/env.sh"
cd "$REPO"
set +e
python -m pytest -q tests "$@"
status=$?
# pytest's 5 means "no tests collected" (e.g. a -k that matched nothing).
[ "$status" -eq 5 ] && { echo "No tests collected."; exit 0; }
exit "$status"
