# Shared by the benchmark scripts (sourced, after W and RUNS are set).

# Wall-clock time in seconds, with nanoseconds.
now() { date +%s.%N; }

# Writes a dense mixed image of SIZE_MIB MiB at PATH and reads it once into the page cache.
mixed_image() {
  echo "generating a $2 MiB dense mixed image..." >&2
  python3 bench/gen_image.py "$1" "$2"
  cat "$1" > /dev/null
}

# best of RUNS wall-clock seconds of "$@", calling the reset function $1 before each run;
# a failing run shows its stderr and ends the benchmark
best() {
  local reset=$1; shift
  local best=""
  for _ in $(seq "$RUNS"); do
    $reset
    local t0 t1 t
    t0=$(now); "$@" > /dev/null 2>"$W/err" || { cat "$W/err" >&2; exit 1; }; t1=$(now)
    t=$(echo "$t1 - $t0" | bc -l)
    if [ -z "$best" ] || [ "$(echo "$t < $best" | bc -l)" = 1 ]; then best=$t; fi
  done
  echo "$best"
}
