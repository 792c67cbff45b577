#!/usr/bin/env bash
# G_stack at 7B (Du et al. 2024): train 8 layers at Llama-2-7B widths (preset 8L4096H) for the
# growth guideline's d tokens, stack them x4 into 32 layers (llama2-7b), train to the budget.
#
#   bash examples/pretrain_7b_gstack.sh --dry-run             # plan all three phases, no GPU
#   DATA_PATH=data/corpus_text_document TOKENIZER_MODEL=tok.model NNODES=8 \
#       bash examples/pretrain_7b_gstack.sh                  # on every node (see the .sbatch)
#
# Every setting is an environment variable (`--help` lists them); the logic lives in
# examples/lib/gstack_common.sh, shared with pretrain_1b_gstack.sh. See docs/scale_out.md.
set -euo pipefail

: "${MODEL_SMALL:=8L4096H}"
: "${MODEL_LARGE:=llama2-7b}"
: "${STACKING_LIST:=0-7*4}"
: "${TRAIN_TOKENS:=300000000000}"   # the paper's 7B run: 300B tokens
# 8 layers (1.9B parameters) train data-parallel; the 32-layer model is split TP 2 x PP 2 with
# 4 interleaved chunks of 4 layers per stage to shrink the pipeline bubble.
: "${SMALL_TP:=${TP:-1}}"
: "${SMALL_PP:=${PP:-1}}"
: "${LARGE_TP:=${TP:-2}}"
: "${LARGE_PP:=${PP:-2}}"
: "${LARGE_VPP_LAYERS=${VPP_LAYERS-4}}"  # '=': LARGE_VPP_LAYERS= (empty) turns interleaving off
: "${GLOBAL_BATCH_SIZE:=1024}"      # x 4096 tokens = 4M tokens per step, as Llama 2

source "$(dirname "${BASH_SOURCE[0]}")/lib/gstack_common.sh"
gstack_main "$@"
