#!/bin/sh
# Container entrypoint of the unCLIP image: prepare the process, then exec the command (PID 1 stays the
# Python process, so SIGTERM reaches uvicorn / the rq worker directly; compose adds `init: true` to reap).
#
# PROMETHEUS_MULTIPROC_DIR must exist, be writable and start EMPTY: prometheus_client's multi-process mode
# sums every *.db file in it, so files left by the previous run's processes would inflate the counters.
set -eu

if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
    find "$PROMETHEUS_MULTIPROC_DIR" -mindepth 1 -delete
fi

exec "$@"
