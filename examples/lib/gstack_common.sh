# Shared logic of the G_stack recipes (examples/pretrain_*_gstack.sh): sourced, not run.
#
# A recipe script sets its defaults (MODEL_SMALL, MODEL_LARGE, STACKING_LIST, TRAIN_TOKENS, the
# parallel layout, ...) and calls `gstack_main "$@"`, which runs three phases:
#   1. train MODEL_SMALL for SMALL_TRAIN_TOKENS (default: the growth guideline's d);
#   2. grow it offline with tools/grow_checkpoint.py (node 0 only) into MODEL_LARGE's depth,
#      re-sharded for the large phase's TP/PP/virtual PP;
#   3. train MODEL_LARGE from the grown weights with a fresh optimizer and LR schedule
#      (iteration 0, LR re-warm-up) for the rest of the budget, on the rest of the data stream:
#      both phases read one GPTDataset sample order, the large phase from where the small one
#      stopped (--no-load-optim --no-load-rng keep the consumed-sample count; --finetune would
#      start the stream over, training the grown model again on the small model's tokens).
# `--dry-run` prints tools/plan.py's plan for all three phases and exits: no GPU, no
# torch.distributed. Every setting comes from the environment; `--help` lists them.
#
# One invocation per node (Slurm: `srun --ntasks-per-node=1`); each phase is a torchrun over
# NNODES x GPUS_PER_NODE ranks. Finished phases leave a marker in OUTPUT_DIR, so rerunning the
# job skips them and resumes an interrupted phase from its latest checkpoint.

GSTACK_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

gstack_usage() {
    cat <<EOF
usage: $(basename "$0") [--dry-run] [--help]

G_stack recipe: ${MODEL_SMALL} -> grow (${STACKING_LIST}) -> ${MODEL_LARGE}.

Environment (current value in brackets):
  launch     NNODES [${NNODES}] NODE_RANK [${NODE_RANK}] GPUS_PER_NODE [${GPUS_PER_NODE}]
             MASTER_ADDR [${MASTER_ADDR}] MASTER_PORT [${MASTER_PORT}] PYTHON [${PYTHON}]
             (under Slurm: SLURM_NNODES, SLURM_NODEID and the first host of SLURM_JOB_NODELIST)
  models     MODEL_SMALL [${MODEL_SMALL}] MODEL_LARGE [${MODEL_LARGE}]
             STACKING_LIST [${STACKING_LIST}] GROWTH_OPERATOR [${GROWTH_OPERATOR}]
             GROWTH_MASK_ITERS [${GROWTH_MASK_ITERS}] (with GROWTH_OPERATOR=random: fade the
             fresh layers in over this many iterations, MSG-style)
  layout     SMALL_TP [${SMALL_TP}] SMALL_PP [${SMALL_PP}] SMALL_VPP_LAYERS [${SMALL_VPP_LAYERS}]
             LARGE_TP [${LARGE_TP}] LARGE_PP [${LARGE_PP}] LARGE_VPP_LAYERS [${LARGE_VPP_LAYERS}]
             (TP, PP, VPP_LAYERS set both phases; VPP_LAYERS = layers per virtual pipeline stage)
             SEQUENCE_PARALLEL [${SEQUENCE_PARALLEL}] DISTRIBUTED_OPTIMIZER [${DISTRIBUTED_OPTIMIZER}]
             OVERLAP_COMM [${OVERLAP_COMM}] (overlapped gradient reduce and parameter gather)
             BF16 [${BF16}] TRANSFORMER_IMPL [${TRANSFORMER_IMPL}] (USE_TE=0 -> local)
             SMALL_RECOMPUTE [${SMALL_RECOMPUTE}] LARGE_RECOMPUTE [${LARGE_RECOMPUTE}] (selective|full)
             RECOMPUTE_METHOD [${RECOMPUTE_METHOD}] RECOMPUTE_NUM_LAYERS [${RECOMPUTE_NUM_LAYERS}] (full only)
  batch      SMALL_MICRO_BATCH_SIZE [${SMALL_MICRO_BATCH_SIZE}] LARGE_MICRO_BATCH_SIZE [${LARGE_MICRO_BATCH_SIZE}]
             GLOBAL_BATCH_SIZE [${GLOBAL_BATCH_SIZE}]
  tokens     TRAIN_TOKENS [${TRAIN_TOKENS}] SMALL_TRAIN_TOKENS [${SMALL_TRAIN_TOKENS:-guideline}]
             LARGE_TRAIN_TOKENS [${LARGE_TRAIN_TOKENS:-TRAIN_TOKENS - SMALL_TRAIN_TOKENS}]
             SMALL_TRAIN_ITERS / LARGE_TRAIN_ITERS [${SMALL_TRAIN_ITERS:-}/${LARGE_TRAIN_ITERS:-}] (override tokens)
  schedule   SMALL_LR [${SMALL_LR}] LARGE_LR [${LARGE_LR}] SMALL_MIN_LR [${SMALL_MIN_LR}] LARGE_MIN_LR [${LARGE_MIN_LR}]
             SMALL_WARMUP_ITERS [${SMALL_WARMUP_ITERS}] LARGE_WARMUP_ITERS [${LARGE_WARMUP_ITERS}]
             LR_DECAY_STYLE [${LR_DECAY_STYLE}] ADAM_BETA2 [${ADAM_BETA2}] WEIGHT_DECAY [${WEIGHT_DECAY}] CLIP_GRAD [${CLIP_GRAD}] SEED [${SEED}]
  data       DATA_PATH [${DATA_PATH}] MOCK_DATA [${MOCK_DATA}] SPLIT [${SPLIT}]
             TOKENIZER_TYPE [${TOKENIZER_TYPE}] TOKENIZER_MODEL [${TOKENIZER_MODEL}] VOCAB_SIZE [${VOCAB_SIZE}]
  output     OUTPUT_DIR [${OUTPUT_DIR}] SAVE_INTERVAL [${SAVE_INTERVAL}] LOG_INTERVAL [${LOG_INTERVAL}]
             ASYNC_SAVE [${ASYNC_SAVE}] (1: --async-save, checkpoints written while training goes on)
             EVAL_INTERVAL [${EVAL_INTERVAL}] EVAL_ITERS [${EVAL_ITERS}] GROW_WAIT_TIMEOUT [${GROW_WAIT_TIMEOUT}]
  extra      EXTRA_TRAIN_ARGS (appended to both training phases), GPU_MEMORY_GIB [${GPU_MEMORY_GIB}] (dry run)
  time       EXIT_DURATION_MINS [${EXIT_DURATION_MINS:-none}]: this job's minutes, for all its phases; a phase
             that runs out saves and exits 75, and the next submission continues it
EOF
}

# Defaults every recipe shares; a recipe sets its own before sourcing this file.
gstack_defaults() {
    # Launch: Slurm when present, else single node.
    if [[ -n "${SLURM_JOB_NODELIST:-}" && -z "${MASTER_ADDR:-}" ]]; then
        MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -1)"
    fi
    : "${NNODES:=${SLURM_NNODES:-1}}"
    : "${NODE_RANK:=${SLURM_NODEID:-0}}"
    : "${GPUS_PER_NODE:=8}"
    : "${MASTER_ADDR:=127.0.0.1}"
    : "${MASTER_PORT:=29500}"
    : "${PYTHON:=python}"

    : "${GROWTH_OPERATOR:=stack}"
    : "${GROWTH_MASK_ITERS:=}"
    : "${SMALL_TP:=${TP:-1}}"
    : "${SMALL_PP:=${PP:-1}}"
    : "${SMALL_VPP_LAYERS:=${VPP_LAYERS:-}}"
    : "${LARGE_TP:=${TP:-1}}"
    : "${LARGE_PP:=${PP:-1}}"
    : "${LARGE_VPP_LAYERS:=${VPP_LAYERS:-}}"
    if [[ "${USE_TE:-1}" == 0 ]]; then : "${TRANSFORMER_IMPL:=local}"; fi
    : "${TRANSFORMER_IMPL:=transformer_engine}"
    # Only Transformer Engine's norms support sequence parallelism; the trainer refuses
    # --sequence-parallel with the local and fused implementations.
    if [[ "$TRANSFORMER_IMPL" == transformer_engine ]]; then
        : "${SEQUENCE_PARALLEL:=1}"
    else
        : "${SEQUENCE_PARALLEL:=0}"
    fi
    : "${DISTRIBUTED_OPTIMIZER:=1}"
    # As Megatron-LM's recipes: the data-parallel gradient reductions overlap the backward pass
    # and, with the distributed optimizer, the parameter all-gathers the next forward pass.
    : "${OVERLAP_COMM:=1}"
    : "${BF16:=1}"
    : "${SMALL_RECOMPUTE:=${RECOMPUTE:-}}"
    : "${LARGE_RECOMPUTE:=${RECOMPUTE:-}}"
    # Full recompute of every layer's input: what tools/plan.py's "full" estimate assumes.
    : "${RECOMPUTE_METHOD:=uniform}"
    : "${RECOMPUTE_NUM_LAYERS:=1}"

    : "${SMALL_MICRO_BATCH_SIZE:=${MICRO_BATCH_SIZE:-1}}"
    : "${LARGE_MICRO_BATCH_SIZE:=${MICRO_BATCH_SIZE:-1}}"
    : "${GLOBAL_BATCH_SIZE:=1024}"

    # The paper's schedule: LR 1e-3 before growth, 3e-4 after, cosine, LR re-warmed after growth.
    : "${SMALL_LR:=1e-3}"
    : "${LARGE_LR:=3e-4}"
    : "${SMALL_MIN_LR:=1e-4}"
    : "${LARGE_MIN_LR:=3e-5}"
    : "${SMALL_WARMUP_ITERS:=500}"
    : "${LARGE_WARMUP_ITERS:=3000}"
    : "${LR_DECAY_STYLE:=cosine}"
    # The paper's AdamW beta2 (Megatron-LM's default is 0.999).
    : "${ADAM_BETA2:=0.95}"
    : "${WEIGHT_DECAY:=0.1}"
    : "${CLIP_GRAD:=1.0}"
    : "${SEED:=1234}"

    : "${DATA_PATH:=}"
    : "${MOCK_DATA:=0}"
    : "${SPLIT:=969,30,1}"
    : "${TOKENIZER_TYPE:=SentencePieceTokenizer}"
    : "${TOKENIZER_MODEL:=}"
    : "${VOCAB_SIZE:=}"

    : "${OUTPUT_DIR:=${GSTACK_REPO_ROOT}/runs/gstack-${MODEL_LARGE}}"
    : "${SAVE_INTERVAL:=1000}"
    : "${ASYNC_SAVE:=0}"
    : "${LOG_INTERVAL:=10}"
    : "${EVAL_INTERVAL:=1000}"
    : "${EVAL_ITERS:=10}"
    : "${GROW_WAIT_TIMEOUT:=14400}"
    : "${GPU_MEMORY_GIB:=80}"
    : "${EXTRA_TRAIN_ARGS:=}"
    : "${EXIT_DURATION_MINS:=}"

    # The trainer and tools run from the repo root: paths given relative to the caller's
    # directory are made absolute, so that both (and the phase markers) see the same files.
    OUTPUT_DIR="$(realpath -m "$OUTPUT_DIR")"
    [[ -n "$TOKENIZER_MODEL" ]] && TOKENIZER_MODEL="$(realpath -m "$TOKENIZER_MODEL")"
    if [[ -n "$DATA_PATH" ]]; then
        local word resolved=()
        for word in $DATA_PATH; do  # 'PREFIX ...' or 'WEIGHT PREFIX ...'
            if [[ "$word" =~ ^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$ ]]; then resolved+=("$word")
            else resolved+=("$(realpath -m "$word")"); fi
        done
        DATA_PATH="${resolved[*]}"
    fi

    SMALL_CKPT="${OUTPUT_DIR}/checkpoints/small"
    GROWN_CKPT="${OUTPUT_DIR}/checkpoints/grown"
    LARGE_CKPT="${OUTPUT_DIR}/checkpoints/large"
    WORLD_SIZE=$((NNODES * GPUS_PER_NODE))
}

gstack_log() { echo "[gstack node ${NODE_RANK}] $*" >&2; }
gstack_die() { gstack_log "error: $*"; exit 2; }

# The checkout's megastack wins over any installed copy, for tools and trainer alike.
export PYTHONPATH="${GSTACK_REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"

gstack_python() { (cd "$GSTACK_REPO_ROOT" && "$PYTHON" "$@"); }

# Exact parameter count of a preset (the guideline's N).
gstack_num_parameters() {
    gstack_python -c "from megastack.config import ModelConfig; print(ModelConfig.from_name('$1').num_parameters())"
}

# A token count as an integer: 3e11, 300B, 1.5T ... (megastack.growth.timing.parse_count).
gstack_count() {
    gstack_python -c "import sys
from megastack.growth.timing import parse_count
try:
    print(int(parse_count(sys.argv[2])))
except ValueError as e:
    sys.exit(f'{sys.argv[1]}={sys.argv[2]}: {e}')" "$1" "$2" || exit 2
}

# Tokens before growth: SMALL_TRAIN_TOKENS, or the guideline's d for MODEL_LARGE and TRAIN_TOKENS.
gstack_resolve_tokens() {
    TRAIN_TOKENS="$(gstack_count TRAIN_TOKENS "$TRAIN_TOKENS")" || exit 2
    if [[ -n "${SMALL_TRAIN_TOKENS:-}" ]]; then
        SMALL_TRAIN_TOKENS="$(gstack_count SMALL_TRAIN_TOKENS "$SMALL_TRAIN_TOKENS")" || exit 2
    fi
    if [[ -n "${LARGE_TRAIN_TOKENS:-}" ]]; then
        LARGE_TRAIN_TOKENS="$(gstack_count LARGE_TRAIN_TOKENS "$LARGE_TRAIN_TOKENS")" || exit 2
    fi
    if [[ -z "${SMALL_TRAIN_TOKENS:-}" ]]; then
        local n
        n="$(gstack_num_parameters "$MODEL_LARGE")"
        SMALL_TRAIN_TOKENS="$(gstack_python -c \
            "from megastack.growth.timing import growth_tokens; print(int(growth_tokens($n, $TRAIN_TOKENS)))")"
        gstack_log "growth guideline: N=$n D=$TRAIN_TOKENS -> train the small model for d=$SMALL_TRAIN_TOKENS tokens"
    fi
    if [[ -z "${LARGE_TRAIN_TOKENS:-}" ]]; then
        LARGE_TRAIN_TOKENS=$((TRAIN_TOKENS - SMALL_TRAIN_TOKENS))
    fi
    if ((LARGE_TRAIN_TOKENS <= 0)); then
        gstack_die "SMALL_TRAIN_TOKENS=$SMALL_TRAIN_TOKENS leaves no tokens of TRAIN_TOKENS=$TRAIN_TOKENS \
for the grown model: lower SMALL_TRAIN_TOKENS (or raise TRAIN_TOKENS), set LARGE_TRAIN_TOKENS, or \
set SMALL_TRAIN_ITERS and LARGE_TRAIN_ITERS"
    fi
}

gstack_seq_length() {
    gstack_python -c "from megastack.config import ModelConfig; print(ModelConfig.from_name('$1').seq_length)"
}

# Iterations of each phase (SMALL_TRAIN_ITERS, LARGE_TRAIN_ITERS, from their tokens unless
# given) and of the whole data stream (STREAM_ITERS) both phases' datasets are built for.
gstack_resolve_iters() {
    local small_seq large_seq
    small_seq="$(gstack_seq_length "$MODEL_SMALL")"
    large_seq="$(gstack_seq_length "$MODEL_LARGE")"
    ((small_seq == large_seq)) || gstack_die "MODEL_SMALL=$MODEL_SMALL has sequence length $small_seq, \
MODEL_LARGE=$MODEL_LARGE $large_seq: the grown model continues the small model's data stream, which \
needs one sequence length"
    GSTACK_ITERS_FROM_TOKENS=0
    if [[ -z "${SMALL_TRAIN_ITERS:-}" ]]; then
        GSTACK_ITERS_FROM_TOKENS=1
        local per_iter=$((GLOBAL_BATCH_SIZE * small_seq))
        SMALL_TRAIN_ITERS="$(gstack_python -c "import math; print(math.ceil(float('$SMALL_TRAIN_TOKENS') / $per_iter))")"
        LARGE_TRAIN_ITERS="$(gstack_python -c "import math; print(math.ceil(float('$LARGE_TRAIN_TOKENS') / $per_iter))")"
    fi
    STREAM_ITERS=$((SMALL_TRAIN_ITERS + LARGE_TRAIN_ITERS))
}

# Flags of one training phase ("small" or "large") into the array GSTACK_ARGS.
gstack_phase_args() {
    local phase="$1" up
    up="$(echo "$phase" | tr '[:lower:]' '[:upper:]')"
    local model_var="MODEL_${up}" tp_var="${up}_TP" pp_var="${up}_PP" vpp_var="${up}_VPP_LAYERS"
    local mbs_var="${up}_MICRO_BATCH_SIZE" rc_var="${up}_RECOMPUTE"
    GSTACK_ARGS=(
        --model "${!model_var}"
        --tensor-model-parallel-size "${!tp_var}"
        --pipeline-model-parallel-size "${!pp_var}"
        --micro-batch-size "${!mbs_var}"
        --global-batch-size "$GLOBAL_BATCH_SIZE"
        --transformer-impl "$TRANSFORMER_IMPL"
    )
    [[ -n "${!vpp_var}" ]] && GSTACK_ARGS+=(--num-layers-per-virtual-pipeline-stage "${!vpp_var}")
    [[ -n "${!rc_var}" ]] && GSTACK_ARGS+=(--recompute-granularity "${!rc_var}")
    [[ "$SEQUENCE_PARALLEL" == 1 && "${!tp_var}" -gt 1 ]] && GSTACK_ARGS+=(--sequence-parallel)
    [[ "$DISTRIBUTED_OPTIMIZER" == 1 ]] && GSTACK_ARGS+=(--use-distributed-optimizer)
    [[ "$BF16" == 1 ]] && GSTACK_ARGS+=(--bf16)
    [[ -n "$VOCAB_SIZE" ]] && GSTACK_ARGS+=(--vocab-size "$VOCAB_SIZE")
    return 0
}

# Training-only flags of a phase (schedule, data, logging) appended to GSTACK_ARGS.
gstack_train_args() {
    local phase="$1" up
    up="$(echo "$phase" | tr '[:lower:]' '[:upper:]')"
    local iters_var="${up}_TRAIN_ITERS"
    local lr_var="${up}_LR" min_lr_var="${up}_MIN_LR" warmup_var="${up}_WARMUP_ITERS"
    local rc_var="${up}_RECOMPUTE"
    # The trainer's full recompute needs a method; the planner (gstack_phase_args) takes none.
    if [[ "${!rc_var}" == full ]]; then
        GSTACK_ARGS+=(--recompute-method "$RECOMPUTE_METHOD" --recompute-num-layers "$RECOMPUTE_NUM_LAYERS")
    fi
    # One data stream: both phases build GPTDataset for the whole run's samples (its sample
    # order depends on the count), each stops after its own iterations and decays its LR over
    # them.
    if [[ "$OVERLAP_COMM" == 1 ]]; then
        GSTACK_ARGS+=(--overlap-grad-reduce)
        [[ "$DISTRIBUTED_OPTIMIZER" == 1 ]] && GSTACK_ARGS+=(--overlap-param-gather)
    fi
    [[ "$ASYNC_SAVE" == 1 ]] && GSTACK_ARGS+=(--async-save)
    GSTACK_ARGS+=(--train-iters "$STREAM_ITERS" --exit-interval "${!iters_var}"
                  --lr-decay-iters "${!iters_var}")
    GSTACK_ARGS+=(
        --lr "${!lr_var}" --min-lr "${!min_lr_var}" --lr-warmup-iters "${!warmup_var}"
        --lr-decay-style "$LR_DECAY_STYLE" --weight-decay "$WEIGHT_DECAY" --clip-grad "$CLIP_GRAD"
        --adam-beta2 "$ADAM_BETA2" --seed "$SEED" --split "$SPLIT"
        --save-interval "$SAVE_INTERVAL" --log-interval "$LOG_INTERVAL"
        --eval-interval "$EVAL_INTERVAL" --eval-iters "$EVAL_ITERS"
        --tensorboard-dir "${OUTPUT_DIR}/tensorboard/${phase}"
    )
    if [[ "$MOCK_DATA" == 1 ]]; then
        # megastack.pretrain gives synthetic tokens a NullTokenizer spanning the model's
        # vocabulary (--vocab-size, else the --model preset's), so the planned sizes hold.
        GSTACK_ARGS+=(--mock-data)
    else
        [[ -n "$DATA_PATH" ]] || gstack_die "set DATA_PATH to the preprocessed dataset prefix(es) \
(tools/preprocess_data.py), or MOCK_DATA=1 for synthetic tokens"
        # DATA_PATH may hold several (weight, prefix) words: split on purpose.
        # shellcheck disable=SC2206
        GSTACK_ARGS+=(--data-path $DATA_PATH --tokenizer-type "$TOKENIZER_TYPE")
        [[ -n "$TOKENIZER_MODEL" ]] && GSTACK_ARGS+=(--tokenizer-model "$TOKENIZER_MODEL")
    fi
    gstack_check_time "$phase phase"
    # One budget for the whole job (bash's SECONDS count from its start): each phase gets what
    # the phases before it left.
    [[ -n "$EXIT_DURATION_MINS" ]] && \
        GSTACK_ARGS+=(--exit-duration-in-mins "$((EXIT_DURATION_MINS - SECONDS / 60))")
    if [[ -n "$EXTRA_TRAIN_ARGS" ]]; then
        # shellcheck disable=SC2206
        GSTACK_ARGS+=($EXTRA_TRAIN_ARGS)
    fi
    return 0
}

# Exits 75 (submit again) when EXIT_DURATION_MINS leaves less than a minute for the next step.
gstack_check_time() {
    [[ -z "$EXIT_DURATION_MINS" ]] && return 0
    if ((EXIT_DURATION_MINS - SECONDS / 60 < 1)); then
        gstack_log "EXIT_DURATION_MINS=$EXIT_DURATION_MINS is used up before the $1: submit again to continue"
        exit 75
    fi
}

# A persistent checkpoint, or a non-persistent one (EXTRA_TRAIN_ARGS=--non-persistent-save-interval).
gstack_has_checkpoint() {
    [[ -f "$1/latest_checkpointed_iteration.txt" || -f "$1/non_persistent/latest_checkpointed_iteration.txt" ]]
}

gstack_torchrun() {
    local port="$1"
    shift
    gstack_log "torchrun on ${NNODES}x${GPUS_PER_NODE}: python -m megastack.pretrain $*"
    (cd "$GSTACK_REPO_ROOT" && "$PYTHON" -m torch.distributed.run \
        --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$GPUS_PER_NODE" \
        --master-addr "$MASTER_ADDR" --master-port "$port" \
        -m megastack.pretrain "$@")
}

# Node 0 marks a finished phase; the other nodes wait for the marker (shared filesystem).
gstack_mark_done() { [[ "$NODE_RANK" == 0 ]] && touch "${OUTPUT_DIR}/.$1.done"; return 0; }
gstack_is_done() { [[ -f "${OUTPUT_DIR}/.$1.done" ]]; }
gstack_wait_done() {
    local waited=0
    until gstack_is_done "$1"; do
        ((waited >= GROW_WAIT_TIMEOUT)) && gstack_die "waited ${GROW_WAIT_TIMEOUT}s for node 0 to finish '$1' \
(marker ${OUTPUT_DIR}/.$1.done): check node 0's log"
        sleep 10
        waited=$((waited + 10))
    done
}

# A phase is done when its checkpoint reached the phase's iterations. A clean stop before that
# (EXIT_DURATION_MINS or --exit-duration-in-mins ahead of a job's time limit) exits 75
# (EX_TEMPFAIL) without marking it: the next submission resumes the phase from its checkpoint.
gstack_finish_phase() {
    local phase="$1" ckpt="$2" target="$3" reached
    reached="$(cat "$ckpt/latest_checkpointed_iteration.txt" 2>/dev/null || echo none)"
    if [[ "$reached" != "$target" ]]; then
        gstack_log "$phase phase stopped at iteration $reached of $target (checkpoint $ckpt): \
submit again to continue it"
        exit 75
    fi
    gstack_mark_done "$phase"
}

gstack_train_small() {
    if gstack_is_done small; then gstack_log "small phase already done: skipping"; return; fi
    gstack_phase_args small
    gstack_train_args small
    GSTACK_ARGS+=(--save "$SMALL_CKPT")
    gstack_has_checkpoint "$SMALL_CKPT" && GSTACK_ARGS+=(--load "$SMALL_CKPT")
    gstack_torchrun "$MASTER_PORT" "${GSTACK_ARGS[@]}"
    gstack_finish_phase small "$SMALL_CKPT" "$SMALL_TRAIN_ITERS"
}

gstack_grow() {
    if gstack_is_done grow; then gstack_log "growth already done: skipping"; return; fi
    if [[ "$NODE_RANK" != 0 ]]; then gstack_wait_done grow; return; fi
    gstack_check_time growth
    local args=(
        --load "$SMALL_CKPT" --save "$GROWN_CKPT"
        --stacking-list "$STACKING_LIST" --operator "$GROWTH_OPERATOR"
        --target-tensor-parallel-size "$LARGE_TP" --target-pipeline-parallel-size "$LARGE_PP"
    )
    [[ -n "$LARGE_VPP_LAYERS" ]] && args+=(--target-num-layers-per-virtual-pipeline-stage "$LARGE_VPP_LAYERS")
    gstack_log "grow: python tools/grow_checkpoint.py ${args[*]}"
    gstack_python tools/grow_checkpoint.py "${args[@]}"
    gstack_mark_done grow
}

gstack_train_large() {
    if gstack_is_done large; then gstack_log "large phase already done: skipping"; return; fi
    gstack_phase_args large
    gstack_train_args large
    GSTACK_ARGS+=(--save "$LARGE_CKPT")
    if gstack_has_checkpoint "$LARGE_CKPT"; then
        GSTACK_ARGS+=(--load "$LARGE_CKPT")  # resume the large phase itself
    else
        # Grown weights, fresh optimizer and LR schedule from iteration 0 (LR re-warm-up); the
        # consumed-sample count carried over continues the data stream.
        GSTACK_ARGS+=(--load "$GROWN_CKPT" --no-load-optim --no-load-rng)
        # A resumed large phase finds the ramp in its checkpoint.
        [[ -n "$GROWTH_MASK_ITERS" ]] && GSTACK_ARGS+=(--growth-mask-iters "$GROWTH_MASK_ITERS")
    fi
    gstack_torchrun "$((MASTER_PORT + 1))" "${GSTACK_ARGS[@]}"
    gstack_finish_phase large "$LARGE_CKPT" "$LARGE_TRAIN_ITERS"
}

gstack_dry_run() {
    local plan=(tools/plan.py --nnodes "$NNODES" --nproc-per-node "$GPUS_PER_NODE"
                --gpu-memory-gib "$GPU_MEMORY_GIB")
    gstack_phase_args small
    plan+=("${GSTACK_ARGS[@]}")
    # One switch for both phases in the planner (it ignores it where TP is 1); the trainer only
    # gets --sequence-parallel where TP > 1.
    [[ "$SEQUENCE_PARALLEL" == 1 ]] && plan+=(--sequence-parallel)
    plan+=(--grow-to "$MODEL_LARGE" --stacking-list "$STACKING_LIST"
           --target-tensor-parallel-size "$LARGE_TP" --target-pipeline-parallel-size "$LARGE_PP"
           --target-micro-batch-size "$LARGE_MICRO_BATCH_SIZE"
           --target-recompute-granularity "${LARGE_RECOMPUTE:-none}")
    [[ -n "$LARGE_VPP_LAYERS" ]] && plan+=(--target-num-layers-per-virtual-pipeline-stage "$LARGE_VPP_LAYERS")
    if ((GSTACK_ITERS_FROM_TOKENS)); then
        # The tokens the two phases will train (LARGE_TRAIN_TOKENS may not be the rest of D).
        plan+=(--small-train-tokens "$SMALL_TRAIN_TOKENS"
               --train-tokens "$((SMALL_TRAIN_TOKENS + LARGE_TRAIN_TOKENS))")
    fi
    gstack_python "${plan[@]}"
}

gstack_main() {
    local dry_run=0
    for arg in "$@"; do
        case "$arg" in
            --dry-run) dry_run=1 ;;
            -h|--help) gstack_defaults; gstack_usage; exit 0 ;;
            *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
        esac
    done
    gstack_defaults
    if [[ -n "${SMALL_TRAIN_ITERS:-}" && -n "${LARGE_TRAIN_ITERS:-}" ]]; then
        :  # iteration counts given: no token arithmetic
    elif [[ -z "${SMALL_TRAIN_ITERS:-}${LARGE_TRAIN_ITERS:-}" ]]; then
        gstack_resolve_tokens
    else
        gstack_die "set both SMALL_TRAIN_ITERS and LARGE_TRAIN_ITERS, or neither (tokens then)"
    fi
    gstack_resolve_iters
    if ((dry_run)); then
        gstack_dry_run
        exit $?
    fi
    mkdir -p "$OUTPUT_DIR"
    # Both phases' layouts checked before the small phase trains (a large-phase layout the
    # world cannot hold failed only after the small phase and the growth); node 0 keeps the plan.
    local plan_out=/dev/null
    [[ "$NODE_RANK" == 0 ]] && plan_out="${OUTPUT_DIR}/plan.txt"
    gstack_dry_run > "$plan_out" || gstack_die "the plan of this run is invalid (message above): \
fix the layout before training (bash $0 --dry-run shows the whole plan)"
    export CUDA_DEVICE_MAX_CONNECTIONS="${CUDA_DEVICE_MAX_CONNECTIONS:-1}"  # TP/SP comm overlap ordering
    gstack_log "G_stack: ${MODEL_SMALL} -> ${MODEL_LARGE} on ${NNODES}x${GPUS_PER_NODE}, output ${OUTPUT_DIR}"
    gstack_train_small
    gstack_grow
    gstack_train_large
    gstack_log "done: grown model checkpoints in ${LARGE_CKPT}"
}
