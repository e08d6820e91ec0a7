# Sourced by the scripts: one cargo target dir kept warm between runs (RocksDB's C++
# build costs ~12 minutes per fresh target dir). Override with CARGO_TARGET_DIR.
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
  if mkdir -p /var/cache/bora/target 2>/dev/null && [ -w /var/cache/bora/target ]; then
    export CARGO_TARGET_DIR=/var/cache/bora/target
  else
    export CARGO_TARGET_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/bora/target"
  fi
fi
export BORA_BIN="$CARGO_TARGET_DIR/release/bora"
