#!/usr/bin/env bash
# megastack quickstart: G_stack vs scratch on the shipped sample corpus, CPU-sized (about 5 min on
# 2 cores; a GPU is used automatically when present).
#
#   bash examples/pretrain_tiny_gstack.sh
#
# 1. hold out whole documents for validation, train a SentencePiece tokenizer on the rest,
#    preprocess (Megatron .bin/.idx; --split keeps the held-out documents out of training);
# 2. train SMALL_MODEL (2 layers) for SMALL_ITERS iterations;
# 3. grow it with G_stack (tools/grow_checkpoint.py, stacking list 0-1*4) to LARGE_MODEL (8 layers);
# 4. train the grown model, resuming the data stream where the small model stopped, with a fresh
#    optimizer and LR warm-up, until its FLOPs (small model included) equal the scratch run's;
# 5. train LARGE_MODEL from scratch for TRAIN_ITERS on the same data order;
# 6. print the comparison table and write a validation-loss-vs-FLOPs plot.
#
# Every phase is built with the same --train-iters (so GPTDataset shuffles identically) and
# stops with --exit-interval. Everything goes under OUTPUT_DIR, which a rerun replaces.
# Environment (defaults in brackets):
#   OUTPUT_DIR [runs/tiny_gstack]  PYTHON [.venv/bin/python if present, else python]
#   DATA_INPUT [examples/data/sample.jsonl.gz]  MAX_DOCUMENTS [all]  VALID_FRACTION [0.05]
#   VOCAB_SIZE [4096] (a multiple of 128)  SMALL_MODEL [mini-2l128h]  LARGE_MODEL [mini-8l128h]
#   HIDDEN_SIZE FFN_HIDDEN_SIZE NUM_ATTENTION_HEADS SEQ_LENGTH [the presets']
#   TRAIN_ITERS [128] (scratch)  SMALL_ITERS [40]  MICRO_BATCH_SIZE [8]  GLOBAL_BATCH_SIZE [8]
#   LR [1e-3]  MIN_LR [1e-4]  WARMUP_ITERS [16]  GROWN_WARMUP_ITERS [8]
#   EVAL_INTERVAL [8]  EVAL_ITERS [4]  LOG_INTERVAL [EVAL_INTERVAL]  SEED [1234]
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "${REPO_ROOT}/.venv/bin/python" ]]; then PYTHON="${REPO_ROOT}/.venv/bin/python"; else PYTHON=python; fi
fi
: "${OUTPUT_DIR:=${REPO_ROOT}/runs/tiny_gstack}"
: "${DATA_INPUT:=${REPO_ROOT}/examples/data/sample.jsonl.gz}"
: "${MAX_DOCUMENTS:=}"
: "${VALID_FRACTION:=0.05}"
: "${VOCAB_SIZE:=4096}"
: "${SMALL_MODEL:=mini-2l128h}"
: "${LARGE_MODEL:=mini-8l128h}"
: "${TRAIN_ITERS:=128}"
: "${SMALL_ITERS:=40}"
: "${MICRO_BATCH_SIZE:=8}"
: "${GLOBAL_BATCH_SIZE:=8}"
: "${LR:=1e-3}"
: "${MIN_LR:=1e-4}"
: "${WARMUP_ITERS:=16}"
: "${GROWN_WARMUP_ITERS:=8}"
: "${EVAL_INTERVAL:=8}"
: "${EVAL_ITERS:=4}"
: "${LOG_INTERVAL:=${EVAL_INTERVAL}}"
: "${SEED:=1234}"

die() { echo "pretrain_tiny_gstack: error: $*" >&2; exit 2; }
step() { echo; echo "=== $* ($(date +%T))"; }

for var in TRAIN_ITERS SMALL_ITERS EVAL_INTERVAL EVAL_ITERS MICRO_BATCH_SIZE GLOBAL_BATCH_SIZE VOCAB_SIZE; do
    [[ "${!var}" =~ ^[0-9]+$ ]] && (( ${!var} >= 1 )) || die "$var=${!var} must be a whole number >= 1"
done
(( SMALL_ITERS < TRAIN_ITERS )) \
    || die "SMALL_ITERS=$SMALL_ITERS must be below TRAIN_ITERS=$TRAIN_ITERS (the small model trains first, the grown one for the rest)"
(( VOCAB_SIZE % 128 == 0 )) || die "VOCAB_SIZE=$VOCAB_SIZE must be a multiple of 128 (the trainer pads the vocabulary to one; FLOPs are counted on it)"
(( SMALL_ITERS % EVAL_INTERVAL == 0 && TRAIN_ITERS % EVAL_INTERVAL == 0 )) \
    || die "SMALL_ITERS=$SMALL_ITERS and TRAIN_ITERS=$TRAIN_ITERS must be multiples of EVAL_INTERVAL=$EVAL_INTERVAL (each phase is evaluated at its last iteration)"

# Replace only a directory this script made (it leaves a marker), never arbitrary data.
MARKER="${OUTPUT_DIR}/.pretrain_tiny_gstack"
if [[ -e "$OUTPUT_DIR" ]]; then
    if [[ -f "$MARKER" ]]; then
        rm -rf "$OUTPUT_DIR"
    elif [[ -n "$(ls -A "$OUTPUT_DIR")" ]]; then
        die "OUTPUT_DIR=$OUTPUT_DIR exists, is not empty and was not made by this script: choose another OUTPUT_DIR"
    fi
fi
mkdir -p "$OUTPUT_DIR"
touch "$MARKER"
START_SECONDS=$SECONDS

DATA_DIR="$OUTPUT_DIR/data"
CKPT_DIR="$OUTPUT_DIR/checkpoints"
TB_DIR="$OUTPUT_DIR/tensorboard"
METRICS_DIR="$OUTPUT_DIR/metrics"
mkdir -p "$DATA_DIR" "$CKPT_DIR" "$TB_DIR" "$METRICS_DIR"

# Architecture overrides apply to both models (and to the FLOPs accounting).
SIZE_FLAGS=()
SPEC_SUFFIX="+vocab_size=${VOCAB_SIZE}"
for pair in HIDDEN_SIZE:hidden_size FFN_HIDDEN_SIZE:ffn_hidden_size \
            NUM_ATTENTION_HEADS:num_attention_heads SEQ_LENGTH:seq_length; do
    var="${pair%%:*}"; field="${pair#*:}"
    if [[ -n "${!var:-}" ]]; then
        SIZE_FLAGS+=("--${field//_/-}" "${!var}")
        SPEC_SUFFIX+="+${field}=${!var}"
        if [[ "$field" == num_attention_heads ]]; then
            SIZE_FLAGS+=(--num-query-groups "${!var}")
            SPEC_SUFFIX+="+num_query_groups=${!var}"
        fi
        if [[ "$field" == seq_length ]]; then
            SIZE_FLAGS+=(--max-position-embeddings "${!var}")
            SPEC_SUFFIX+="+max_position_embeddings=${!var}"
        fi
    fi
done
SMALL_SPEC="${SMALL_MODEL}${SPEC_SUFFIX}"
LARGE_SPEC="${LARGE_MODEL}${SPEC_SUFFIX}"
SMALL_LAYERS="$("$PYTHON" -c "from megastack.experiments.model_spec import parse_model_spec as p; print(p('$SMALL_SPEC').num_layers)")"
LARGE_LAYERS="$("$PYTHON" -c "from megastack.experiments.model_spec import parse_model_spec as p; print(p('$LARGE_SPEC').num_layers)")"
(( LARGE_LAYERS % SMALL_LAYERS == 0 )) || die "LARGE_MODEL has $LARGE_LAYERS layers, not a multiple of SMALL_MODEL's $SMALL_LAYERS: G_stack stacks the whole small model"
STACKING_LIST="0-$((SMALL_LAYERS - 1))*$((LARGE_LAYERS / SMALL_LAYERS))"
GROWN_ITERS="$("$PYTHON" -m megastack.experiments.flops_budget --budget-iters "$TRAIN_ITERS" \
    --small-iters "$SMALL_ITERS" --small-model "$SMALL_SPEC" --large-model "$LARGE_SPEC" \
    --multiple-of "$EVAL_INTERVAL")"
# One dataset size for every phase: the longest run's iterations.
DATASET_ITERS=$(( SMALL_ITERS + GROWN_ITERS > TRAIN_ITERS ? SMALL_ITERS + GROWN_ITERS : TRAIN_ITERS ))

step "1/6 data: hold out documents, train the tokenizer, preprocess"
HOLDOUT_FLAGS=(--input "$DATA_INPUT" --output-dir "$DATA_DIR" --valid-fraction "$VALID_FRACTION" --seed "$SEED")
[[ -n "$MAX_DOCUMENTS" ]] && HOLDOUT_FLAGS+=(--max-documents "$MAX_DOCUMENTS")
"$PYTHON" -m megastack.experiments.holdout "${HOLDOUT_FLAGS[@]}"
SPLIT="$("$PYTHON" -c "import json; print(json.load(open('$DATA_DIR/split.json'))['split'])")"
"$PYTHON" tools/train_tokenizer.py --input "$DATA_DIR/train.jsonl" --model-prefix "$DATA_DIR/tokenizer" \
    --vocab-size "$VOCAB_SIZE" --model-type bpe --seed "$SEED"
"$PYTHON" tools/preprocess_data.py --input "$DATA_DIR/all.jsonl" --output-prefix "$DATA_DIR/sample" \
    --tokenizer-type SentencePieceTokenizer --tokenizer-model "$DATA_DIR/tokenizer.model" \
    --append-eod --workers 2 --log-interval 0

COMMON_FLAGS=(
    "${SIZE_FLAGS[@]}"
    --tokenizer-type SentencePieceTokenizer --tokenizer-model "$DATA_DIR/tokenizer.model"
    --data-path "$DATA_DIR/sample_text_document" --split "$SPLIT"
    --data-cache-path "$DATA_DIR/index_cache"
    --micro-batch-size "$MICRO_BATCH_SIZE" --global-batch-size "$GLOBAL_BATCH_SIZE"
    --train-iters "$DATASET_ITERS" --lr "$LR" --min-lr "$MIN_LR" --lr-decay-style cosine
    --weight-decay 0.1 --clip-grad 1.0 --adam-beta2 0.95 --seed "$SEED"
    --log-interval "$LOG_INTERVAL" --eval-interval "$EVAL_INTERVAL" --eval-iters "$EVAL_ITERS"
)

# train_phase NAME ITERS WARMUP [extra flags...]: one process, stopping after ITERS iterations.
train_phase() {
    local name="$1" iters="$2" warmup="$3"; shift 3
    local stop=()
    (( iters < DATASET_ITERS )) && stop=(--exit-interval "$iters")
    MEGASTACK_METRICS_FILE="$METRICS_DIR/$name.jsonl" "$PYTHON" -m megastack.pretrain \
        "${COMMON_FLAGS[@]}" "$@" --lr-warmup-iters "$warmup" --lr-decay-iters "$iters" \
        "${stop[@]}" --save "$CKPT_DIR/$name" --tensorboard-dir "$TB_DIR/$name"
}

step "2/6 train the small model ($SMALL_SPEC) for $SMALL_ITERS iterations"
train_phase small "$SMALL_ITERS" "$GROWN_WARMUP_ITERS" --model "$SMALL_MODEL"

step "3/6 grow with G_stack: $SMALL_LAYERS -> $LARGE_LAYERS layers, stacking list $STACKING_LIST"
"$PYTHON" tools/grow_checkpoint.py --load "$CKPT_DIR/small" --save "$CKPT_DIR/grown_init" \
    --stacking-list "$STACKING_LIST" --target-num-layers "$LARGE_LAYERS" --operator stack --seed "$SEED"

step "4/6 train the grown model for $GROWN_ITERS iterations (equal FLOPs with the small model charged)"
# Not --finetune: that restarts the data stream; here the grown model continues it (consumed
# samples carried over) with a fresh optimizer, LR warm-up and cosine, as the paper does.
train_phase grown "$GROWN_ITERS" "$GROWN_WARMUP_ITERS" --model "$LARGE_MODEL" \
    --load "$CKPT_DIR/grown_init" --no-load-optim --no-load-rng

step "5/6 train the same-size model from scratch for $TRAIN_ITERS iterations"
train_phase scratch "$TRAIN_ITERS" "$WARMUP_ITERS" --model "$LARGE_MODEL"

step "6/6 compare"
"$PYTHON" -m megastack.experiments.report --output-dir "$OUTPUT_DIR" --baseline scratch \
    --title "G_stack vs scratch (quickstart)" \
    --run "scratch|scratch ${LARGE_LAYERS}L|${LARGE_SPEC}:$METRICS_DIR/scratch.jsonl" \
    --run "gstack|G_stack ${SMALL_LAYERS}L->${LARGE_LAYERS}L|${SMALL_SPEC}:$METRICS_DIR/small.jsonl,${LARGE_SPEC}:$METRICS_DIR/grown.jsonl"

echo
echo "finished in $((SECONDS - START_SECONDS)) s"
echo "TensorBoard logs: $TB_DIR   (tensorboard --logdir $TB_DIR)"
echo "checkpoints:      $CKPT_DIR/{small,grown_init,grown,scratch}"
echo "plot:             $OUTPUT_DIR/valid_loss_vs_flops.png (and valid_loss_vs_tokens.png)"
echo "results:          $OUTPUT_DIR/results.json, $OUTPUT_DIR/results.md"
