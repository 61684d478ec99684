#!/usr/bin/env bash
# Every figure issue 10 asks of the GPU host, for one visit (../shared/gpu/README.md: one script per visit).
# The device tool runs a command for at most 10 minutes: give the steps in a few calls, e.g.
#   bash bench/gpu_visit.sh tests throughput      then      bash bench/gpu_visit.sh yolo decode streams
# Carry .gpu-bundle (bash ../shared/gpu/bundle.sh hypothesis: the tests need it too) and, for the YOLO figures, an ONNX YOLO at gpu-models/yolo.onnx
# (yolov3-tiny: model-registry convert-darknet, then model_registry.precision.convert_to_fp16 to halve it to ~18 MB;
# the working tree, the bundle and the model must stay under 64 MiB). Figures go under $OUT, else ./gpu-figures.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-figures}
mkdir -p "$out"
[ -f .gpu-bundle/activate ] && source .gpu-bundle/activate
py=${PYTHON:-python3}
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true

run() {  # name, then the bench and its arguments: its stdout and JSON under $out
  local name=$1; shift
  echo "== $name: $*"
  timeout 560 "$py" "$@" --json "$out/$name.json" > "$out/$name.txt" 2>&1
  echo "rc=$?" >> "$out/$name.txt"
  grep -E "^batch|streams:|rc=" "$out/$name.txt" | tail -12
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(tests throughput yolo decode streams)
for step in "${steps[@]}"; do
  case $step in
    tests) # That host reaches no network: the YOLO test models (fetched from PyPI) are left out.
      "$py" -m pytest -q -p no:cacheprovider tests/test_device_path.py tests/test_gpu_path.py tests/test_adapters.py \
        tests/test_out_of_memory.py -k "not yolo and not v5 and not ultralytics and not darknet and not refusal" \
        > "$out/tests.txt" 2>&1; tail -3 "$out/tests.txt" ;;
    throughput)
      run nanodet bench/gpu_throughput.py --batch-sizes 1,2,4,8,16,32,64
      run nanodet_fp32 bench/gpu_throughput.py --batch-sizes 8,32 --precision fp32
      run nanodet_cuda_graphs bench/gpu_throughput.py --batch-sizes 8,32 --cuda-graphs
      run nanodet_host_chain bench/gpu_throughput.py --batch-sizes 8,32 --device-path never ;;
    yolo) if [ -f gpu-models/yolo.onnx ]; then
            run yolo bench/gpu_throughput.py --model gpu-models/yolo.onnx --batch-sizes 1,8,32,64
          else echo "no gpu-models/yolo.onnx: YOLO figures skipped"; fi ;;
    decode) run decode bench/decode_scaling.py --streams 1,2,4,8,16,32,64 ;;
    streams)
      run streams24 bench/realtime_streams.py --streams 24 --seconds 90
      run streams96 bench/realtime_streams.py --streams 96 --seconds 120 ;;
    *) echo "unknown step $step (tests, throughput, yolo, decode, streams)" >&2; exit 2 ;;
  esac
done
