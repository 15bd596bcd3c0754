#!/usr/bin/env bash
# Install numallm and what it needs on a fresh Debian/Ubuntu machine.
#   bash scripts/install.sh          the engine (libnuma1 from apt, numallm from pip)
#   bash scripts/install.sh --test   also the test dependencies (with Debian's chromium and
#                                    chromium-driver, for the web page's browser test) and
#                                    numallm[cluster] (Ray: the --pipeline tests run a local cluster)
#   bash scripts/install.sh --cluster   also numallm[cluster] (Ray), for --pipeline
#   bash scripts/install.sh --llama-cpp   also llama-cpp-python (compiles llama.cpp, ~10 min;
#                                    only for recording fixtures and --vs-llama-cpp benchmarks)
#   bash scripts/install.sh --no-warm-up   without fetching the default model and compiling its
#                                    kernels (then the first generate does both, 30-60 s)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

extras=""
warm_up=1
for arg in "$@"; do
  case "$arg" in
    --test) extras="${extras:+$extras,}test,cluster" ;;
    --cluster) extras="${extras:+$extras,}cluster" ;;
    --llama-cpp) extras="${extras:+$extras,}llama-cpp" ;;
    --no-warm-up) warm_up=0 ;;
    *) echo "install.sh: unknown option $arg (use --test, --cluster, --llama-cpp, --no-warm-up)" >&2; exit 2 ;;
  esac
done

# libnuma is optional at run time (numallm falls back to sysfs), but placement needs it.
apt_packages=""
# grep reads the whole list: under pipefail, grep -q quitting at the match could kill
# ldconfig with SIGPIPE, fail the test and run apt-get for a library that is there.
ldconfig -p 2>/dev/null | grep 'libnuma\.so\.1' >/dev/null || apt_packages="libnuma1"
case ",$extras," in
  *,test,*)  # tests/test_serve_page.py drives the web page in headless Chromium
    [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || apt_packages="$apt_packages chromium chromium-driver" ;;
esac
if [ -n "$apt_packages" ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  # shellcheck disable=SC2086  # a list of package names
  $sudo apt-get update -qq && $sudo apt-get install -y -qq $apt_packages
fi

spec="."
[ -n "$extras" ] && spec=".[$extras]"
case ",$extras," in
  *,llama-cpp,*)
    # llama.cpp builds for this CPU (-march=native); on Xeons that report AMX, its AMX
    # matmul dies with SIGILL on its worker threads here (tilezero without the tile state
    # the kernel grants per thread: llama.cpp PR #26954). Build it without AMX: the
    # reference then runs its AVX-512 kernels, which every comparison here assumes.
    noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    export CFLAGS="${CFLAGS:+$CFLAGS }$noamx" CXXFLAGS="${CXXFLAGS:+$CXXFLAGS }$noamx"
    ;;
esac

# A model's first run compiles its forward pass for this CPU (Numba, 25-45 s of CPU) and
# the default model is downloaded on first use: both happen here, once, so that the
# first `numallm generate` starts in seconds. Both are cached: the model in
# ~/.cache/numallm, the machine code beside the sources (Numba's __pycache__).
# The warm-up runs from the source tree beside `pip install -e`, which it need not wait
# for where the dependencies are installed already (it exits 3 where they are not), and
# compiles in two processes (scripts/compile_plan.py).
warm_up_job=""
if [ "$warm_up" = 1 ]; then
  echo "install.sh: fetching the default model and compiling its kernels for this CPU (once)" >&2
  "$python" scripts/warm_up.py &
  warm_up_job=$!
  trap 'kill "$warm_up_job" 2>/dev/null || true' EXIT  # pip failed: stop it too
fi
"$python" -m pip install --disable-pip-version-check -q -e "$spec"
if [ -n "$warm_up_job" ]; then
  rc=0
  wait "$warm_up_job" || rc=$?
  trap - EXIT
  if [ "$rc" = 3 ]; then
    rc=0
    "$python" scripts/warm_up.py || rc=$?
  fi
  [ "$rc" = 0 ] ||
    echo "install.sh: the warm-up failed (above); numallm is installed, and its first run will try again" >&2
fi
