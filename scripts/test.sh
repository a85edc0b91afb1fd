#!/usr/bin/env bash
# The README's test command (`npm test`): starts the local services the integration tests need (Kafka, the SQS,
# S3 and DynamoDB servers; installed on first use, reused afterwards), runs every test file with Node's test runner, and stops
# the services it started. Slow suites (*.slow.test.ts) run only with MLMF_SLOW=1.
# Usage: scripts/test.sh [test files...]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$#" -gt 0 ]; then
  files=("$@")
else
  pattern='*.test.ts'
  mapfile -t files < <(find test -name "$pattern" -not -path '*/fixtures/*' | sort)
  if [ "${MLMF_SLOW:-0}" != "1" ]; then
    mapfile -t files < <(printf '%s\n' "${files[@]}" | grep -v '\.slow\.test\.ts$' || true)
  fi
fi

# The native JPEG decoder's tests (test/intake/jpeg-native.test.ts) need the module: build it when missing or stale.
if [ ! -f build/native/jpeg_prepare.node ] || [ lib/intake/native/jpeg_prepare.c -nt build/native/jpeg_prepare.node ]; then
  bash scripts/build-native.sh
fi

# The services this run started (and stops at its end): only those that were down, never one already running.
started=()
if [ -f scripts/services.sh ] && [ "${MLMF_NO_SERVICES:-0}" != "1" ]; then
  if ! bash scripts/services.sh status >/dev/null 2>&1; then
    for s in kafka sqs s3 dynamodb; do
      # A probe can time out on a loaded machine: a service counts as down (and is stopped at the end) only when
      # three probes in a row say so, so a run never stops a server another run or the user started.
      for try in 1 2 3; do
        bash scripts/services.sh status "$s" >/dev/null 2>&1 && continue 2
        [ "$try" = 3 ] || sleep 2
      done
      started+=("$s")
    done
    echo "test.sh: starting local services (scripts/services.sh up ${started[*]})"
    bash scripts/services.sh up "${started[@]}"
  fi
  export MLMF_SERVICES=1
  # The topic provisioner's real-broker test reads this name.
  export MLMF_KAFKA_BROKERS="${MLMF_KAFKA_BROKERS:-127.0.0.1:9092}"
fi
# The report's browser test runs the Chromium scripts/install-chromium.sh installs; CI (.ci/run) exports its path.
if [ -z "${MLMF_CHROMIUM:-}" ] && [ "${CI:-}" != "true" ]; then
  MLMF_CHROMIUM="$(bash scripts/install-chromium.sh --path 2>/dev/null || true)"
  export MLMF_CHROMIUM
fi

cleanup() { if [ "${#started[@]}" -gt 0 ]; then bash scripts/services.sh down "${started[@]}" || true; fi; }
trap cleanup EXIT

node --import tsx --test --test-concurrency=1 --test-reporter=spec "${files[@]}"
