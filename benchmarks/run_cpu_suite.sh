#!/usr/bin/env bash
# Regenerates the whole CPU table of benchmarks/RESULTS.md in one command:
#   benchmarks/run_cpu_suite.sh            (PYTHON=/path/to/python REPEATS=7 to change either)
# Writes benchmarks/results/cpu_<model>_<precision>.{json,md} and the summary benchmarks/cpu_summary.md.
# Every run puts keras_vit, its fast_predictor, KerasHub and Hugging Face (and timm when installed)
# in one process, interleaved, so the ratios hold even on a busy machine; absolute times do not.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=benchmarks/results
mkdir -p "$OUT"
export KERAS_BACKEND=tensorflow TF_CPP_MIN_LOG_LEVEL=2
# oneDNN on, as the `keras-vit` command sets it on x86-64 (TensorFlow reads it at import; the
# tables in RESULTS.md were taken with it on). TF_ENABLE_ONEDNN_OPTS=0 reproduces the off ones.
export TF_ENABLE_ONEDNN_OPTS=${TF_ENABLE_ONEDNN_OPTS:-1}
for spec in "ViTTi16 16" "ViTS16 8" "ViTB16 8"; do
  set -- $spec
  for precision in float32 bfloat16; do
    tasks=latency,throughput,training
    if [ "$precision" = float32 ]; then tasks=$tasks,memory; fi
    if [ "$1" = ViTTi16 ] && [ "$precision" = float32 ]; then tasks=$tasks,tflite,pipeline; fi
    "$PY" benchmarks/peers.py --model "$1" --batch-size "$2" --precision "$precision" \
      --peers keras_hub,hf,timm --tasks "$tasks" --repeats "${REPEATS:-5}" --warmup 2 \
      --output "$OUT/cpu_$1_$precision.json" --markdown "$OUT/cpu_$1_$precision.md"
  done
done
"$PY" benchmarks/summarize.py "$OUT"/cpu_*.json > benchmarks/cpu_summary.md
cat benchmarks/cpu_summary.md
