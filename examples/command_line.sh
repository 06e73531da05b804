#!/usr/bin/env bash
# The command line end to end, on the embedded broker started on its own: publish the
# demo dataset, train your model file for one epoch, evaluate the saved model (its
# model.json says how it was trained), and write its predictions to a topic.
#   bash examples/command_line.sh            (from the repository root, after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
DDP_KBIT=${DDP_KBIT:-.venv/bin/ddp-kbit}
RUN=${RUN:-runs/example}
mkdir -p "$RUN"
"$DDP_KBIT" broker --run-dir "$RUN/broker" > "$RUN/broker.address" &
BROKER=$!
trap 'kill $BROKER 2>/dev/null || true' EXIT
for _ in $(seq 300); do [ -s "$RUN/broker.address" ] && break; sleep 0.1; done
KAFKA=$(head -1 "$RUN/broker.address")
[ -n "$KAFKA" ] || { echo "the broker did not start (see $RUN/broker)" >&2; exit 1; }

"$DDP_KBIT" publish --bootstrap-servers "$KAFKA" --split train --limit 4000 --topic example.train --no-progress
"$DDP_KBIT" publish --bootstrap-servers "$KAFKA" --split test --limit 1000 --topic example.test --no-progress
"$DDP_KBIT" train --bootstrap-servers "$KAFKA" --train-topic example.train --test-topic example.test \
    --model examples/my_model.py:small --transform examples/my_model.py:invert --lr-schedule cosine --lr 0.001 \
    --epochs 1 --num-processes 2 --no-progress --run-dir "$RUN/train"
"$DDP_KBIT" evaluate --bootstrap-servers "$KAFKA" --model-path "$RUN/train/model.pt" --test-topic example.test \
    --predictions-topic example.predictions --no-progress --run-dir "$RUN/evaluate"
