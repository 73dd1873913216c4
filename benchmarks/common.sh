# Sourced by the benchmark scripts: their one-line errors, the checks they make before any work, and a
# temporary folder that the next run removes if a killed run left it behind.

# fail MESSAGE...: say what is wrong in one line, named by the script, and exit 2
fail() {
  echo "$(basename "$0"): error: $*" >&2
  exit 2
}

# require_nanogpt DIR: DIR is a nanoGPT checkout (the benchmarks import its model.py)
require_nanogpt() {
  [ -f "$1/model.py" ] || fail "NANOGPT_DIR $1 holds no model.py: give the folder of a nanoGPT checkout"
}

# require_count NAME VALUE: VALUE is a whole number above 0
require_count() {
  [[ $2 =~ ^[1-9][0-9]*$ ]] || fail "$1 is $2; it must be a whole number above 0"
}

# require_data DIR: DIR is a folder `python -m gptdist.prepare` made
require_data() {
  [ -f "$1/manifest.json" ] || fail "$1 is not a prepared data folder: python -m gptdist.prepare --dataset verdict --out $1"
}

# alive PID: whether process PID runs (a zombie, ended but not yet reaped, does not)
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  [ ! -r "/proc/$1/stat" ] || [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -d' ' -f1)" != Z ]
}

# own_temporary PREFIX: make and print the folder $TMPDIR/PREFIX-HOST-PID, after removing the folders of
# PREFIX that processes of this host which no longer run left there
own_temporary() {
  local root=${TMPDIR:-/tmp} host stale
  host=$(hostname)
  for stale in "$root/$1-$host-"*; do
    [[ ${stale##*-} =~ ^[0-9]+$ ]] && [ -d "$stale" ] && ! alive "${stale##*-}" && rm -rf "$stale"
  done
  mkdir "$root/$1-$host-$$" && echo "$root/$1-$host-$$"
}
