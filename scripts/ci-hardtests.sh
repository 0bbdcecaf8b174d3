#!/usr/bin/env bash
# The hardening tests of this branch, as CI runs them: property tests of the parsers, the
# SIGTERM/SIGINT test of the real binary, and the 5,000-client reconnect storm.
# Idempotent; needs no service (each test starts its own server and test backend).
set -euo pipefail
cd "$(dirname "$0")/.."

# The storm holds ~10,000 sockets in one process: it raises its own soft open-files limit to
# the hard one, which must allow it.
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt 14096 ]; then
    echo "ci-hardtests: the hard open-files limit ($hard) is below the 14096 the storm test needs" >&2
    exit 1
fi

cargo test --locked --test fuzz_parsing --test shutdown --test storm
