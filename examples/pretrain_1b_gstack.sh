#!/usr/bin/env bash
# G_stack at 1B, the paper's operator-comparison setting (Du et al. 2024): train 6L2048H for
# SMALL_TRAIN_TOKENS (10B, unset it to use the growth guideline), stack x4 into 24L2048H, train
# to the budget.
#
#   bash examples/pretrain_1b_gstack.sh --dry-run
#   DATA_PATH=data/corpus_text_document TOKENIZER_MODEL=tok.model bash examples/pretrain_1b_gstack.sh
#
# Every setting is an environment variable (`--help` lists them); the logic lives in
# examples/lib/gstack_common.sh, shared with pretrain_7b_gstack.sh. See docs/scale_out.md.
set -euo pipefail

: "${MODEL_SMALL:=6L2048H}"
: "${MODEL_LARGE:=24L2048H}"
: "${STACKING_LIST:=0-5*4}"
: "${TRAIN_TOKENS:=100000000000}"
: "${SMALL_TRAIN_TOKENS=10000000000}"  # '=' not ':=': SMALL_TRAIN_TOKENS= (empty) picks the guideline
: "${MICRO_BATCH_SIZE:=4}"
: "${GLOBAL_BATCH_SIZE:=1024}"      # x 2048 tokens = 2M tokens per step
: "${SMALL_WARMUP_ITERS:=300}"

source "$(dirname "${BASH_SOURCE[0]}")/lib/gstack_common.sh"
gstack_main "$@"
