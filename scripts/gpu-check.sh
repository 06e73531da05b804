#!/usr/bin/env bash
# One prepared command for a machine with an NVIDIA GPU: does the GPU path work, and
# how fast. Runs (embedded broker, Fashion-MNIST, 1 epoch each):
#   nvidia-smi; --gpu and --gpu --amp with 1 process and with one per GPU; an ingest
#   study with --gpu; GPU utilisation sampled every second during each training run;
# and writes one JSON ($OUT/gpu-check.json, else runs/gpu-check/gpu-check.json) with
# samples/s, data-wait fraction, utilisation and accuracy per run. Meant to finish in
# under 8 minutes on a set-up checkout (scripts/setup.sh first when .venv is missing;
# TORCH_SPEC=torch to let pip pick a CUDA build where the CPU wheel is the default).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-runs/gpu-check}
mkdir -p "$OUT_DIR"
PY=.venv/bin/python
[ -x "$PY" ] || bash scripts/setup.sh
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu-check: this torch has no CUDA ($("$PY" -c 'import torch; print(torch.__version__)')); installing ${TORCH_SPEC:-torch} with CUDA"
  "$PY" -m pip install -q --upgrade "${TORCH_SPEC:-torch}" || true
fi
nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1 || echo "gpu-check: nvidia-smi failed" >> "$OUT_DIR/nvidia-smi.txt"
GPUS=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | wc -l)
[ "$GPUS" -ge 1 ] || GPUS=1
LOG="$OUT_DIR/log.txt"
: > "$LOG"

"$PY" -m ddp_kbit.main --mode publish --run-dir "$OUT_DIR/publish" --no-progress >> "$LOG" 2>&1 || true

run() {  # name, then flags
  local name=$1; shift
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -l 1 \
    > "$OUT_DIR/$name.util.csv" 2>/dev/null &
  local sampler=$!
  timeout 240 "$PY" -m ddp_kbit.main --mode train --epochs 1 --no-progress --run-dir "$OUT_DIR/$name" "$@" \
    >> "$LOG" 2>&1
  echo "$name rc=$?" >> "$LOG"
  kill "$sampler" 2>/dev/null
}
run gpu1 --gpu --num-processes 1
run gpu1-amp --gpu --amp --num-processes 1
if [ "$GPUS" -gt 1 ]; then
  run gpu-all --gpu --num-processes "$GPUS"
  run gpu-all-amp --gpu --amp --num-processes "$GPUS"
fi
timeout 150 "$PY" -m ddp_kbit.main --mode experiment --workloads ingest --formats avro,protobuf --iterations 3 \
  --warmup 1 --gpu --output-dir "$OUT_DIR/ingest" --run-dir "$OUT_DIR/ingest-run" --no-progress >> "$LOG" 2>&1
echo "ingest rc=$?" >> "$LOG"

"$PY" - "$OUT_DIR" <<'PY'
import csv, json, sys
from pathlib import Path

out = Path(sys.argv[1])
summary = {"nvidia_smi": (out / "nvidia-smi.txt").read_text()[:4000], "runs": {}}
for report in sorted(out.glob("*/report.json")):
    name, r = report.parent.name, json.loads(report.read_text())
    util = []
    if (out / f"{name}.util.csv").exists():
        for row in csv.reader((out / f"{name}.util.csv").read_text().splitlines()):
            try:
                util.append(float(row[0]))
            except (ValueError, IndexError):
                pass
    if r.get("mode") == "train":
        e = r["epochs"][-1] if r["epochs"] else {}
        summary["runs"][name] = {"world_size": r["world_size"], "samples_per_s": e.get("samples_per_s"),
                                 "data_wait_fraction": e.get("data_wait_fraction"),
                                 "test_accuracy": r["final"]["test_accuracy"],
                                 "gpu_util_mean": sum(util) / len(util) if util else None,
                                 "gpu_util_max": max(util) if util else None}
    elif r.get("mode") == "experiment":
        summary["runs"][name] = {"table": r.get("table")}
summary["log_tail"] = (out / "log.txt").read_text()[-6000:]
(out / "gpu-check.json").write_text(json.dumps(summary, indent=2))
print(json.dumps({k: v for k, v in summary["runs"].items()}, indent=2))
PY
