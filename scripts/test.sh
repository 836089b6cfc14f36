#!/usr/bin/env bash
# Runs every check and test: formatting, lints, unit tests, and the black-box conformance suites
# in private network namespaces (needs root), then builds the .deb and the tarball and checks
# them (scripts/check-package.sh). Installs what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
conformance/scripts/build-go-cnitool.sh target/go-cnitool >/dev/null
conformance/scripts/fetch-reference.sh target >/dev/null   # the newest reference, beside Debian's 1.1.1
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --locked
cargo nextest run --workspace --locked --no-fail-fast
scripts/check-package.sh

# The benchmark's interface, once, as a smoke test (figures are not judged here).
scripts/bench.sh --quick --pods 1,10 --out target/bench-smoke >/dev/null
python3 - target/bench-smoke <<'PY'
import json, os, sys
out = sys.argv[1]
for f in ("report.md", "report.json", "pods.svg"):
    assert os.path.getsize(os.path.join(out, f)) > 0, f
suites = json.load(open(os.path.join(out, "report.json")))["suites"]
for key in ("ours", "reference", "floor"):
    s = suites[key]
    for k in ("chain_add_p50_ms", "chain_del_p50_ms", "chain_add_p95_ms", "chain_del_p95_ms",
              "parallel", "pods", "peak_rss_mib", "forks"):
        assert k in s, f"{key} lacks {k}"
    assert [p["n"] for p in s["pods"]] == [1, 10], s["pods"]
    for p in s["parallel"]:
        assert p["duplicate_ips"] == 0 and p["leases_match"] and not p["leftovers"], (key, p)
    churn = s["churn"]
    assert churn["cycles"] > 0 and "add_last_over_first" in churn, (key, churn)
    assert not churn["leftovers"], (key, churn)
print("benchmark smoke test: ok")
PY

# Tests name everything they create rcni-*; nothing may be left behind.
left=$(ip netns list | awk '$1 ~ /^rcni-/ {print $1}')
if [[ -n $left ]]; then
    echo "tests left network namespaces behind: ${left//$'\n'/ }" >&2
    exit 1
fi
echo "all tests passed"
