#!/usr/bin/env bash
# Runs every coverage-guided fuzz target (fuzz/, cargo-fuzz + libFuzzer, AddressSanitizer)
# for SECONDS each (default 20; CI runs the default, a long hunt is e.g. `scripts/fuzz.sh
# 3600`), or only the targets named after it. Each run starts from the committed seeds
# (fuzz/seeds/TARGET: real captures and the SPEC's test vectors) in a scratch corpus, so
# the repository does not grow; a crash fails the run and leaves its input under
# fuzz/artifacts/TARGET/: keep it in fuzz/regressions/TARGET/ (every run replays those)
# and turn it into a regression test next to the parser.
# RUSTC_BOOTSTRAP=1 lets the stable toolchain take the sanitizer flags cargo-fuzz passes.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-20}
shift || true
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== cargo-fuzz not found: installing it"
  cargo install cargo-fuzz --locked
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
echo "== building ${#targets[@]} fuzz targets"
cargo fuzz build -O
scratch=$(mktemp -d /tmp/fieldlink-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  cp -r "seeds/$t/." "$scratch/$t/"
  [ -d "regressions/$t" ] && cp -r "regressions/$t/." "$scratch/$t/"
  echo "== $t: ${secs}s from $(ls "seeds/$t" | wc -l) seeds"
  if ! cargo fuzz run -O "$t" "$scratch/$t" -- -max_total_time="$secs" -max_len=65536 \
      -rss_limit_mb=2048 -print_final_stats=1 2>"$scratch/$t.log"; then
    tail -n 40 "$scratch/$t.log"
    failed+=("$t")
  else
    grep -E "^stat::(number_of_executed_units|new_units_added)" "$scratch/$t.log" | tr '\n' ' '
    echo
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found crashes in: ${failed[*]} (inputs in fuzz/artifacts/)"
  exit 1
fi
echo "== fuzzing: ${#targets[@]} targets, ${secs}s each, no crash"
