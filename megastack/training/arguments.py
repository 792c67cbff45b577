"""Command-line flags of `python -m megastack.pretrain`, with Megatron-LM's names.

`parse_args` returns an `argparse.Namespace`; `build_pretrain_config` turns it into the typed,
validated `PretrainConfig` the trainer runs. Validation happens here, before any process group
or model exists, and every error names the flag and the fix.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Optional

from megastack.config import PRESETS, ModelConfig, ParallelConfig
from megastack.paths import check_output_dir
from megastack.training.batch_schedule import BatchSchedule, RampUp, check_rampup
from megastack.training.exit_signal import SIGNALS as EXIT_SIGNALS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    micro_batch_size: int
    global_batch_size: int
    train_iters: int
    lr: float = 3e-4
    min_lr: float = 0.0
    lr_warmup_iters: int = 0
    lr_decay_iters: Optional[int] = None
    lr_decay_style: str = "linear"
    weight_decay: float = 0.01
    clip_grad: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    bf16: bool = False
    fp16: bool = False
    seed: int = 1234
    transformer_impl: str = "auto"
    recompute_granularity: Optional[str] = None
    recompute_method: Optional[str] = None  # "uniform" or "block"; needed by "full"
    recompute_num_layers: Optional[int] = None
    recompute_modules: Optional[tuple[str, ...]] = None  # selective; None: megatron-core's
    lr_wsd_decay_style: str = "exponential"
    lr_wsd_decay_iters: Optional[int] = None
    override_opt_param_scheduler: bool = False
    use_checkpoint_opt_param_scheduler: bool = False
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False
    align_param_gather: bool = True  # applies with --overlap-param-gather and interleaving
    overlap_p2p_comm: bool = True  # applies with interleaving
    ddp_bucket_size: Optional[int] = None
    growth_mask_iters: Optional[int] = None  # G_random's fresh layers faded in (MSG)
    ddp_num_buckets: Optional[int] = None  # instead of ddp_bucket_size: the rank's parameters / N
    ddp_pad_buckets_for_high_nccl_busbw: bool = False
    align_grad_reduce: bool = True  # applies with --overlap-grad-reduce
    grad_reduce_in_bf16: bool = False
    distributed_timeout_minutes: int = 10
    check_for_nan_in_loss_and_grad: bool = True
    optimizer: str = "adam"
    sgd_momentum: float = 0.9
    lr_warmup_init: float = 0.0
    weight_decay_incr_style: str = "constant"
    manual_gc: bool = False
    manual_gc_interval: int = 0
    manual_gc_eval: bool = True
    empty_unused_memory_level: int = 0
    skip_train: bool = False
    calculate_per_token_loss: bool = False
    start_weight_decay: Optional[float] = None  # None: --weight-decay (constant style)
    end_weight_decay: Optional[float] = None
    rampup_batch_size: Optional[RampUp] = None
    cross_entropy_loss_fusion: bool = False
    cross_entropy_fusion_impl: str = "native"
    apply_query_key_layer_scaling: bool = False
    check_weight_hash_interval: Optional[int] = None  # iterations between DP-replica checks
    # Megatron-LM's numbering: N passes over the batch of the step after N iterations (the
    # one logged as N + 1).
    iterations_to_skip: tuple[int, ...] = ()
    deterministic_mode: bool = False
    # --fp16's loss scaling (megatron-core's grad scalers): constant with loss_scale, else dynamic.
    loss_scale: Optional[float] = None
    initial_loss_scale: float = 2.0 ** 32
    min_loss_scale: float = 1.0
    loss_scale_window: int = 1000
    hysteresis: int = 2

    def batch_schedule(self, data_parallel_size: int = 1) -> BatchSchedule:
        """Each iteration's global batch; `data_parallel_size` only splits it in micro-batches."""
        return BatchSchedule(self.global_batch_size, self.rampup_batch_size,
                             self.micro_batch_size, data_parallel_size)


@dataclass(frozen=True)
class DataConfig:
    data_path: tuple[str, ...] = ()
    # --train/--valid/--test-data-path, in place of data_path and split; None when not given.
    per_split_data_path: Optional[tuple[tuple[str, ...], ...]] = None
    split: str = "969,30,1"
    mock_data: bool = False
    tokenizer_type: Optional[str] = None
    tokenizer_model: Optional[str] = None
    vocab_file: Optional[str] = None
    merge_file: Optional[str] = None
    vocab_size: Optional[int] = None
    data_cache_path: Optional[str] = None
    num_workers: int = 0
    reset_position_ids: bool = False
    reset_attention_mask: bool = False
    eod_mask_loss: bool = False
    mmap_bin_files: bool = True
    num_dataset_builder_threads: int = 1


@dataclass(frozen=True)
class CheckpointConfig:
    save: Optional[str] = None
    load: Optional[str] = None
    save_interval: Optional[int] = None
    no_load_optim: bool = False
    no_load_rng: bool = False
    no_save_optim: bool = False
    no_save_rng: bool = False
    finetune: bool = False
    exit_interval: Optional[int] = None
    exit_duration_in_mins: Optional[float] = None
    exit_signal: Optional[str] = None  # with --exit-signal-handler: the signal that stops
    fully_parallel_save: bool = True
    fully_parallel_load: bool = False
    assume_constant_structure: bool = False
    async_save: bool = False
    ckpt_step: Optional[int] = None  # load this iteration of --load instead of the latest
    # --non-persistent-save-interval: frequent checkpoints into their own directory, only the
    # latest kept; a resume takes the newer of it and --load's latest.
    non_persistent_save_interval: Optional[int] = None
    non_persistent_dir: Optional[str] = None
    exit_on_missing_checkpoint: bool = False
    save_retain_interval: Optional[int] = None  # older checkpoints kept only at its multiples
    pretrained_checkpoint: Optional[str] = None  # fine-tuned from while --load has nothing


@dataclass(frozen=True)
class LoggingConfig:
    log_interval: int = 100
    eval_interval: int = 1000
    eval_iters: int = 100
    # Each --valid-data-path dataset evaluated (and logged) on its own.
    multiple_validation_sets: bool = False
    # Every evaluation reads the whole validation split (its --eval-iters follows from its size).
    full_validation: bool = False
    tensorboard_dir: Optional[str] = None
    tensorboard_log_interval: int = 1  # per-iteration scalars, as Megatron-LM
    tensorboard_queue_size: int = 1000
    log_params_norm: bool = False
    log_num_zeros_in_grad: bool = False
    log_timers_to_tensorboard: bool = False
    log_memory_to_tensorboard: bool = False
    log_world_size_to_tensorboard: bool = False
    log_loss_scale_to_tensorboard: bool = True
    log_learning_rate_to_tensorboard: bool = True
    log_progress: bool = False
    profile: bool = False
    use_pytorch_profiler: bool = False
    profile_step_start: int = 10
    profile_step_end: int = 12
    profile_ranks: tuple[int, ...] = (0,)
    memory_snapshot_path: Optional[str] = None  # --record-memory-history: where to dump
    # Weights & Biases (Megatron-LM's flags): the TensorBoard scalars, also sent there.
    wandb_project: Optional[str] = None
    wandb_exp_name: Optional[str] = None
    wandb_save_dir: Optional[str] = None
    wandb_entity: Optional[str] = None


@dataclass(frozen=True)
class PretrainConfig:
    model: ModelConfig
    parallel: ParallelConfig
    train: TrainConfig
    data: DataConfig
    checkpoint: CheckpointConfig
    logging: LoggingConfig
    growth: Optional["GrowthConfig"] = None  # set when --grow-at-tokens is given

    @property
    def tokens_per_iteration(self) -> int:
        return self.train.global_batch_size * self.model.seq_length


@dataclass(frozen=True)
class GrowthConfig:
    """Growth in one run: train the small model, grow it, continue at the target size."""

    grow_at_tokens: Optional[int]  # None: the timing guideline decides ("auto")
    stacking_list: str
    target_num_layers: int
    operator: str = "stack"
    target_parallel: Optional[ParallelConfig] = None
    lr_after_growth: Optional[float] = None
    lr_warmup_iters_after_growth: Optional[int] = None
    learn_steps: int = 100
    learn_lr: float = 1e-3
    # Width growth in the same step: the grown model's widths (megastack.growth.width's
    # WIDTH_FIELDS), empty when only depth grows.
    target_widths: dict[str, int] = field(default_factory=dict)
    width_operator: str = "direct"

    def target_model(self, small: ModelConfig) -> ModelConfig:
        return small.replace(num_layers=self.target_num_layers, **self.target_widths)


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=sorted(PRESETS), help="named architecture preset")
    g.add_argument("--num-layers", type=int)
    g.add_argument("--hidden-size", type=int)
    g.add_argument("--ffn-hidden-size", type=int)
    g.add_argument("--num-attention-heads", type=int)
    g.add_argument("--num-query-groups", type=int)
    g.add_argument("--group-query-attention", action="store_true")
    g.add_argument("--normalization", choices=["RMSNorm", "LayerNorm"])
    g.add_argument("--norm-epsilon", type=float)
    g.add_argument("--swiglu", action="store_true", default=None)
    g.add_argument("--disable-bias-linear", action="store_true", default=None)
    g.add_argument("--add-qkv-bias", action="store_true", default=None,
                   help="biases in the QKV projection only (Qwen2's attention)")
    g.add_argument("--kv-channels", type=int,
                   help="width of each attention head (default --hidden-size / "
                        "--num-attention-heads; Qwen3's head_dim)")
    g.add_argument("--qk-layernorm", action="store_true", default=None,
                   help="normalise each head's queries and keys (Qwen3's attention)")
    g.add_argument("--position-embedding-type", choices=["rope", "learned_absolute", "none"])
    g.add_argument("--rotary-base", type=int)
    g.add_argument("--use-rope-scaling", dest="rope_scaling", action="store_true", default=None,
                   help="Llama 3.x's RoPE frequency scaling (megatron-core's)")
    g.add_argument("--rope-scaling-factor", type=float,
                   help="with --use-rope-scaling: the factor (Llama 3.1 8, Llama 3.2 32; "
                        "default 8)")
    g.add_argument("--untie-embeddings-and-output-weights", action="store_true", default=None)
    g.add_argument("--seq-length", type=int)
    g.add_argument("--max-position-embeddings", type=int)
    g.add_argument("--init-method-std", type=float)
    g.add_argument("--embedding-init-method-std", type=float,
                   help="std of the word-embedding init (default: --init-method-std)")
    g.add_argument("--attention-dropout", type=float,
                   help="default 0.1 as in Megatron-LM; 0 with a --model preset (Llama-style)")
    g.add_argument("--hidden-dropout", type=float,
                   help="default 0.1 as in Megatron-LM; 0 with a --model preset (Llama-style)")
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    g.add_argument("--transformer-impl", default="auto",
                   choices=["auto", "local", "transformer_engine", "fused"])


def _add_switch(group, name: str, on_help: str, off_help: str,
                dest: Optional[str] = None) -> None:
    """Megatron-LM's on-by-default switch: --NAME (the default) and --no-NAME."""
    dest = dest or name.replace("-", "_")
    group.add_argument(f"--{name}", dest=dest, action="store_true", default=True, help=on_help)
    group.add_argument(f"--no-{name}", dest=dest, action="store_false", help=off_help)


def add_parallel_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    g.add_argument("--num-layers-per-virtual-pipeline-stage", type=int)
    g.add_argument("--num-virtual-stages-per-pipeline-rank", type=int,
                   help="the interleaved schedule's model chunks per pipeline rank (instead of "
                        "--num-layers-per-virtual-pipeline-stage)")
    g.add_argument("--decoder-first-pipeline-num-layers", type=int,
                   help="transformer layers on the first pipeline stage (the stages without a "
                        "count share the rest evenly)")
    g.add_argument("--decoder-last-pipeline-num-layers", type=int,
                   help="transformer layers on the last pipeline stage")
    g.add_argument("--account-for-embedding-in-pipeline-split", action="store_true",
                   help="count the word embedding as a layer when splitting the layers over "
                        "pipeline stages: the first stage holds one transformer layer fewer")
    g.add_argument("--account-for-loss-in-pipeline-split", action="store_true",
                   help="count the output layer and loss as a layer: the last stage holds one "
                        "transformer layer fewer")
    g.add_argument("--sequence-parallel", action="store_true")
    g.add_argument("--use-distributed-optimizer", action="store_true")
    g.add_argument("--overlap-grad-reduce", action="store_true",
                   help="start each gradient bucket's data-parallel reduction during the "
                        "backward pass")
    g.add_argument("--overlap-param-gather", action="store_true",
                   help="with --use-distributed-optimizer and --overlap-grad-reduce: all-gather "
                        "each bucket's updated parameters during the next forward pass instead "
                        "of right after the optimizer step")
    g.add_argument("--no-align-param-gather", dest="align_param_gather", action="store_false",
                   help="with --overlap-param-gather and an interleaved schedule: let each "
                        "pipeline stage start its parameter all-gathers when it needs them "
                        "instead of all stages at once")
    _add_switch(g, "check-for-nan-in-loss-and-grad",
                "stop with an error at a NaN or infinite loss or gradient norm (default)",
                "train on through NaN or infinite values")
    _add_switch(g, "overlap-p2p-communication",
                "with an interleaved schedule, overlap the pipeline's sends and receives with "
                "compute (default, as in Megatron-LM)",
                "send and receive between the interleaved schedule's steps",
                dest="overlap_p2p_comm")
    g.add_argument("--grad-reduce-in-bf16", action="store_true",
                   help="reduce gradients over data parallelism in bf16 (default fp32)")
    g.add_argument("--distributed-timeout-minutes", type=int, default=10,
                   help="timeout of every collective (raise it when rank 0 builds large dataset "
                        "indices or writes large checkpoints while the others wait)")
    g.add_argument("--context-parallel-size", type=int, default=1,
                   help="only 1: megastack has no context parallelism")
    g.add_argument("--ddp-bucket-size", type=int,
                   help="parameters per gradient bucket with --overlap-grad-reduce (default "
                        "Megatron-LM's: max(40M, 1M x data-parallel size))")
    g.add_argument("--ddp-num-buckets", type=int,
                   help="with --overlap-grad-reduce, instead of --ddp-bucket-size: split the "
                        "rank's parameters into about this many gradient buckets")
    g.add_argument("--ddp-pad-buckets-for-high-nccl-busbw", action="store_true",
                   help="with --use-distributed-optimizer: pad each bucket to a multiple of "
                        "2^16 elements (NCCL's bus bandwidth at large data-parallel sizes)")
    g.add_argument("--no-align-grad-reduce", dest="align_grad_reduce", action="store_false",
                   help="with --overlap-grad-reduce and pipeline parallelism: let each bucket's "
                        "reduction start when its gradients are ready instead of where the "
                        "pipeline schedule starts every stage's")


def token_count(text: str) -> float:
    """argparse type for token counts: 3e11, 300B, 1.5K (megastack.growth.timing.parse_count)."""
    from megastack.growth.timing import parse_count

    try:
        return parse_count(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# --fp16's loss-scaling flags and their defaults (Megatron-LM's); without --fp16 they must stay so.
_LOSS_SCALE_DEFAULTS = {"loss_scale": None, "initial_loss_scale": 2.0 ** 32, "min_loss_scale": 1.0,
                        "loss_scale_window": 1000, "hysteresis": 2}


def add_training_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=int, default=1)
    g.add_argument("--global-batch-size", type=int)
    g.add_argument("--train-iters", type=int)
    g.add_argument("--train-tokens", type=token_count,
                   help="alternative to --train-iters: a count such as 3e11 or 300B")
    g.add_argument("--train-samples", type=int,
                   help="alternative to --train-iters: sequences, as in Megatron-LM (the whole "
                        "batches that fit)")
    g.add_argument("--rampup-batch-size", nargs=3, type=int, metavar=("START", "INCR", "SAMPLES"),
                   help="Megatron-LM's batch-size ramp-up: start with START sequences and add INCR "
                        "every SAMPLES / ((--global-batch-size - START) / INCR) consumed samples "
                        "until --global-batch-size")
    g.add_argument("--decrease-batch-size-if-needed", action="store_true",
                   help="when --micro-batch-size x the data-parallel size does not divide "
                        "--global-batch-size (e.g. a job relaunched on fewer nodes), train with "
                        "the largest multiple below it instead of stopping; a launch whose "
                        "data-parallel size divides it gets the full batch back")
    g.add_argument("--lr", type=float, default=3e-4)
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--lr-warmup-iters", type=int, default=0)
    g.add_argument("--lr-warmup-fraction", type=float,
                   help="warmup as a fraction of the decay iterations (instead of "
                        "--lr-warmup-iters)")
    g.add_argument("--lr-decay-iters", type=int)
    g.add_argument("--lr-warmup-samples", type=int,
                   help="with --train-samples: warmup in samples (rounded to iterations)")
    g.add_argument("--lr-decay-samples", type=int,
                   help="with --train-samples: decay in samples (rounded to iterations)")
    g.add_argument("--lr-decay-style", default="linear",
                   choices=["constant", "linear", "cosine", "inverse-square-root", "WSD"])
    g.add_argument("--lr-wsd-decay-style", default="exponential",
                   choices=["exponential", "linear", "cosine", "minus_sqrt"],
                   help="WSD: the shape of the final annealing")
    g.add_argument("--lr-wsd-decay-iters", type=int,
                   help="WSD: iterations of the final annealing, which ends at --lr-decay-iters "
                        "(default --train-iters)")
    g.add_argument("--lr-wsd-decay-samples", type=int,
                   help="WSD with --train-samples: the final annealing in samples (rounded to "
                        "iterations)")
    g.add_argument("--override-opt_param-scheduler", "--override-opt-param-scheduler",
                   dest="override_opt_param_scheduler", action="store_true",
                   help="on resume, take the LR/WD schedule from these flags, not the checkpoint")
    g.add_argument("--use-checkpoint-opt_param-scheduler", "--use-checkpoint-opt-param-scheduler",
                   dest="use_checkpoint_opt_param_scheduler", action="store_true",
                   help="on resume, take the LR/WD schedule from the checkpoint, ignoring these "
                        "flags")
    g.add_argument("--lr-warmup-init", type=float, default=0.0,
                   help="the learning rate the warmup starts from")
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--weight-decay-incr-style", default="constant",
                   choices=["constant", "linear", "cosine"],
                   help="linear/cosine: from --start-weight-decay to --end-weight-decay over the "
                        "run")
    g.add_argument("--start-weight-decay", type=float)
    g.add_argument("--end-weight-decay", type=float)
    g.add_argument("--clip-grad", type=float, default=1.0)
    g.add_argument("--manual-gc", action="store_true",
                   help="turn Python's automatic garbage collection off; collect every "
                        "--manual-gc-interval iterations and around evaluations instead")
    g.add_argument("--manual-gc-interval", type=int, default=0,
                   help="with --manual-gc: iterations between collections (0: at evaluations "
                        "only)")
    g.add_argument("--no-manual-gc-eval", dest="manual_gc_eval", action="store_false",
                   help="with --manual-gc: no collection around evaluations")
    g.add_argument("--empty-unused-memory-level", type=int, default=0, choices=[0, 1, 2],
                   help="release cached CUDA memory after each forward-backward (1) and also "
                        "after each optimizer step (2)")
    g.add_argument("--calculate-per-token-loss", action="store_true",
                   help="the loss is the mean over all loss tokens of the global batch (default: "
                        "the mean of each micro-batch's token mean)")
    g.add_argument("--skip-train", action="store_true",
                   help="no training: evaluate the --load checkpoint on the validation and test "
                        "splits (--eval-iters batches) and exit")
    g.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    g.add_argument("--sgd-momentum", type=float, default=0.9)
    g.add_argument("--adam-beta1", type=float, default=0.9)
    g.add_argument("--adam-beta2", type=float, default=0.999)
    g.add_argument("--adam-eps", type=float, default=1e-8)
    g.add_argument("--bf16", action="store_true")
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--cross-entropy-loss-fusion", action="store_true",
                   help="megatron-core's fused vocab-parallel cross-entropy")
    g.add_argument("--cross-entropy-fusion-impl", choices=["native", "te"], default="native",
                   help="with --cross-entropy-loss-fusion: megatron-core's own kernel or "
                        "Transformer Engine's")
    g.add_argument("--check-weight-hash-across-dp-replicas-interval", type=int,
                   dest="check_weight_hash_interval",
                   help="every N iterations, check that the data-parallel replicas hold "
                        "identical weights (SHA-1 per parameter) and stop if they do not")
    g.add_argument("--deterministic-mode", action="store_true",
                   help="deterministic kernels only (torch.use_deterministic_algorithms and "
                        "megatron-core's deterministic_mode): bitwise-repeatable runs, slower; "
                        "on GPUs set NCCL_ALGO (e.g. Ring or Tree) too")
    g.add_argument("--iterations-to-skip", nargs="+", type=int, default=[], metavar="N",
                   help="pass over these iterations' batches without training on them (e.g. "
                        "the data behind a loss spike). As in Megatron-LM, N is the number of "
                        "iterations done before the step: N skips the step logged as N + 1")
    g = p.add_argument_group("fp16 mixed precision (Megatron-LM's loss scaling)")
    g.add_argument("--fp16", action="store_true",
                   help="fp16 weights and activations, fp32 main weights and optimizer state, "
                        "the loss scaled so that gradients do not underflow")
    g.add_argument("--loss-scale", type=float,
                   help="a constant loss scale (a power of 2); default: dynamic")
    g.add_argument("--initial-loss-scale", type=float,
                   default=_LOSS_SCALE_DEFAULTS["initial_loss_scale"],
                   help="dynamic scaling: the scale to start from")
    g.add_argument("--min-loss-scale", type=float,
                   default=_LOSS_SCALE_DEFAULTS["min_loss_scale"],
                   help="dynamic scaling: the scale is never lowered below this")
    g.add_argument("--loss-scale-window", type=int,
                   default=_LOSS_SCALE_DEFAULTS["loss_scale_window"],
                   help="dynamic scaling: iterations without overflow before the scale doubles")
    g.add_argument("--hysteresis", type=int,
                   default=_LOSS_SCALE_DEFAULTS["hysteresis"],
                   help="dynamic scaling: overflows tolerated before the scale halves")
    g.add_argument("--apply-query-key-layer-scaling", action="store_true",
                   help="scale attention scores down by the layer number before the softmax "
                        "(which multiplies it back in fp32), against fp16 overflow in deep models")
    g.add_argument("--recompute-granularity", choices=["full", "selective"])
    g.add_argument("--recompute-method", choices=["uniform", "block"],
                   help="full recompute: 'uniform' checkpoints the input of every "
                        "--recompute-num-layers layers, 'block' recomputes the first "
                        "--recompute-num-layers layers of each pipeline stage")
    g.add_argument("--recompute-num-layers", type=int,
                   help="layers per recompute unit (uniform) or recomputed per stage (block); "
                        "default 1 with --recompute-granularity full")
    g.add_argument("--recompute-modules", nargs="+", metavar="MODULE",
                   help="selective recompute: which parts of each layer to recompute, among "
                        "core_attn (the default), mlp and layernorm (layernorm needs Transformer "
                        "Engine)")


# Megatron-LM's SentencePiece tokenizer types for GPT training. Training takes only the
# vocabulary size and the end-of-document id from the tokenizer, which these share with
# SentencePieceTokenizer (the model's size and eos id); only their text encoding differs
# (Llama2Tokenizer adds BOS), which matters to tools/preprocess_data.py, not here.
SENTENCEPIECE_ALIASES = ("GPTSentencePieceTokenizer", "Llama2Tokenizer")


def add_data_args(p: argparse.ArgumentParser) -> None:
    # Here, not at module level: tools/plan.py imports this module without the data package.
    from megastack.data.datasets import PER_SPLIT_FLAGS
    from megastack.data.tokenizers import add_hf_special_token_flags

    g = p.add_argument_group("data")
    g.add_argument("--data-path", nargs="*", default=[],
                   help="dataset prefixes, optionally weighted: 'W1 PREFIX1 W2 PREFIX2'")
    g.add_argument("--split", default="969,30,1")
    for flag in PER_SPLIT_FLAGS:  # --train-data-path ...
        g.add_argument(flag, nargs="*",
                       help=f"the {flag.split('-')[2]} split's dataset prefixes (optionally "
                            f"weighted), instead of --data-path and --split")
    g.add_argument("--data-args-path",
                   help="a file holding the --data-path value (for blends too long for a "
                        "command line)")
    g.add_argument("--per-split-data-args-path",
                   help="a JSON file {\"train\": ..., \"valid\": ..., \"test\": ...} holding "
                        "the --train/--valid/--test-data-path values")
    g.add_argument("--num-dataset-builder-threads", type=int, default=1,
                   help="threads per rank building the blend's datasets (their index files)")
    g.add_argument("--mock-data", action="store_true")
    g.add_argument("--tokenizer-type", choices=["SentencePieceTokenizer", "GPT2BPETokenizer",
                                                "HuggingFaceTokenizer", "NullTokenizer",
                                                *SENTENCEPIECE_ALIASES])
    g.add_argument("--tokenizer-model")
    g.add_argument("--vocab-file")
    g.add_argument("--merge-file")
    g.add_argument("--vocab-size", type=int)
    # Training reads no text, so these only name the tokenizer's options.
    add_hf_special_token_flags(g, dest="tokenizer_hf_include_special_tokens")
    g.add_argument("--data-cache-path")
    g.add_argument("--num-workers", type=int, default=0)
    g.add_argument("--reset-position-ids", action="store_true",
                   help="restart position ids after each end-of-document token (used by "
                        "learned absolute positions; megatron-core's RoPE ignores them)")
    g.add_argument("--reset-attention-mask", action="store_true",
                   help="no attention across end-of-document tokens (needs the local or fused "
                        "--transformer-impl: Transformer Engine's causal attention takes no mask)")
    g.add_argument("--eod-mask-loss", action="store_true",
                   help="no loss on end-of-document tokens")
    _add_switch(g, "mmap-bin-files", "memory-map the .bin files (default)",
                "read the .bin files with file reads instead of memory-mapping them")
    g.add_argument("--dataloader-type", default="single", choices=["single", "cyclic", "external"],
                   help="only 'single': samples in order from the consumed position")


def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("checkpointing")
    g.add_argument("--save")
    g.add_argument("--load")
    g.add_argument("--save-interval", "--persistent-save-interval", dest="save_interval",
                   type=int)
    g.add_argument("--save-retain-interval", type=int,
                   help="keep the older checkpoints in --save only at multiples of this many "
                        "iterations (a multiple of --save-interval): each new checkpoint deletes "
                        "the earlier ones that are not")
    g.add_argument("--no-load-optim", action="store_true")
    g.add_argument("--no-load-rng", action="store_true")
    g.add_argument("--no-save-optim", action="store_true",
                   help="save the weights without the optimizer state and LR schedule (a resume "
                        "from such a checkpoint starts them fresh)")
    g.add_argument("--no-save-rng", action="store_true",
                   help="save no RNG state (a resume seeds from --seed)")
    g.add_argument("--finetune", action="store_true",
                   help="load weights only; start at iteration 0 with a fresh optimizer")
    g.add_argument("--pretrained-checkpoint",
                   help="while --load holds no checkpoint, start from these weights as "
                        "--finetune does; once the run has saved, relaunches resume from --load")
    g.add_argument("--exit-interval", type=int,
                   help="stop (after saving) at the first iteration that is a multiple of this "
                        "(Megatron-LM's rule, also after a resume)")
    _add_switch(g, "ckpt-fully-parallel-save",
                "data-parallel replicas split the writing of a checkpoint (default)",
                "the first data-parallel replica writes it all")
    g.add_argument("--ckpt-fully-parallel-load", action="store_true",
                   help="data-parallel replicas split the reading of a checkpoint and exchange "
                        "what they read")
    g.add_argument("--non-persistent-save-interval", type=int,
                   help="iterations between non-persistent checkpoints: written like the others "
                        "into --non-persistent-global-ckpt-dir, each replacing the last, and "
                        "resumed from when newer than --load's latest (e.g. every 50 iterations "
                        "on preemptible nodes, persistent ones every 1000)")
    g.add_argument("--non-persistent-ckpt-type", choices=["global", "local", "in_memory"],
                   help="only 'global' (a directory on the shared filesystem)")
    g.add_argument("--non-persistent-global-ckpt-dir",
                   help="where the non-persistent checkpoints go (default: SAVE/non_persistent)")
    g.add_argument("--ckpt-step", type=int,
                   help="load this iteration's checkpoint from --load instead of the latest")
    g.add_argument("--exit-on-missing-checkpoint", action="store_true",
                   help="fail when --load holds no checkpoint (default: warn and train from "
                        "scratch)")
    g.add_argument("--async-save", action="store_true",
                   help="write checkpoints in a background process per rank while training "
                        "goes on; each is published (renamed, latest file updated) once every "
                        "rank has written its part")
    g.add_argument("--ckpt-assume-constant-structure", action="store_true",
                   help="plan the split of the writing once and reuse it for later saves (the "
                        "model and optimizer must not change shape during the run)")
    g.add_argument("--exit-signal-handler", action="store_true",
                   help="on --exit-signal, save and stop at the end of the iteration (e.g. "
                        "Slurm's --signal ahead of a job's time limit, or a preemption)")
    g.add_argument("--exit-signal", default="SIGTERM", choices=EXIT_SIGNALS,
                   help="the signal --exit-signal-handler catches (default SIGTERM)")
    g.add_argument("--exit-duration-in-mins", type=float,
                   help="stop (after saving) at the first iteration that ends this many minutes "
                        "after the process started (e.g. before a cluster job's time limit)")
    g.add_argument("--use-checkpoint-args", action="store_true",
                   help="take the model flags not given here from the --load checkpoint (its "
                        "megastack record, or a Megatron-LM checkpoint's saved args)")
    g.add_argument("--use-mp-args-from-checkpoint-args", action="store_true",
                   help="with --use-checkpoint-args: take the tensor- and pipeline-parallel "
                        "layout from the checkpoint too (it loads at any layout)")
    g.add_argument("--ckpt-format", default="torch_dist",
                   help="checkpoint format: torch_dist (megatron-core's distributed checkpoint) "
                        "is the one megastack writes and reads")


def _logging_level(value: str) -> int:
    """Megatron-LM's --logging-level takes a number (10 DEBUG, 20 INFO, 30 WARNING ...); a name
    is taken too."""
    if value.lstrip("-").isdigit():
        return int(value)
    level = logging.getLevelName(value.upper())
    if not isinstance(level, int):
        raise argparse.ArgumentTypeError(f"{value!r} is neither a number nor one of DEBUG, "
                                         f"INFO, WARNING, ERROR, CRITICAL")
    return level


def add_logging_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("logging and evaluation")
    g.add_argument("--logging-level", type=_logging_level,
                   help="the log level of every rank (a number as in Megatron-LM, or a name); "
                        "default INFO on rank 0 and the last rank, WARNING on the others")
    g.add_argument("--log-interval", type=int, default=100)
    g.add_argument("--eval-interval", type=int, default=1000, help="0: no evaluation")
    g.add_argument("--eval-iters", type=int, default=100)
    g.add_argument("--multiple-validation-sets", action="store_true",
                   help="evaluate each --valid-data-path dataset on its own: 'lm loss validation "
                        "NAME' per dataset, and their mean as 'lm loss validation'")
    g.add_argument("--full-validation", action="store_true",
                   help="every evaluation reads the whole validation split (instead of "
                        "--eval-iters batches)")
    g.add_argument("--tensorboard-dir")
    g.add_argument("--tensorboard-log-interval", type=int, default=1,
                   help="iterations between TensorBoard points of the loss, learning rate, grad "
                        "norm, batch size (and the --log-*-to-tensorboard values); the printed "
                        "averages come every --log-interval")
    g.add_argument("--tensorboard-queue-size", type=int, default=1000,
                   help="TensorBoard events held in memory before a write")
    g.add_argument("--log-params-norm", action="store_true",
                   help="log the L2 norm of all weights every --log-interval")
    g.add_argument("--log-num-zeros-in-grad", action="store_true",
                   help="log the number of zero gradient entries")
    g.add_argument("--log-timers-to-tensorboard", action="store_true",
                   help="write the forward-backward and optimizer times of each iteration")
    g.add_argument("--log-memory-to-tensorboard", action="store_true",
                   help="write the CUDA memory counters (nothing on CPU)")
    g.add_argument("--log-progress", action="store_true",
                   help="append the iteration, throughput, FLOPs and tokens at the job's start "
                        "and at every checkpoint to progress.txt in --save")
    g.add_argument("--profile", action="store_true",
                   help="profile iterations [--profile-step-start, --profile-step-end): with "
                        "--use-pytorch-profiler a trace in --tensorboard-dir, else an Nsight "
                        "Systems capture range (nsys profile --capture-range=cudaProfilerApi)")
    g.add_argument("--use-pytorch-profiler", action="store_true")
    g.add_argument("--wandb-project",
                   help="also send the TensorBoard scalars to this Weights & Biases project "
                        "(needs the wandb package; WANDB_MODE=offline keeps them local)")
    g.add_argument("--wandb-exp-name", help="the W&B run's name")
    g.add_argument("--wandb-save-dir", help="W&B's local directory (default: wandb's, ./wandb)")
    g.add_argument("--wandb-entity", help="the W&B team or user")
    g.add_argument("--record-memory-history", action="store_true",
                   help="record the CUDA allocator's history and write a snapshot for PyTorch's "
                        "memory visualizer every --log-interval (last rank), and on every rank "
                        "that runs out of memory")
    g.add_argument("--memory-snapshot-path", default="snapshot.pickle",
                   help="where --record-memory-history writes (default snapshot.pickle; out of "
                        "memory: oom_rank-R_snapshot.pickle beside it)")
    g.add_argument("--profile-step-start", type=int, default=10)
    g.add_argument("--profile-step-end", type=int, default=12)
    g.add_argument("--profile-ranks", type=int, nargs="+", default=[0],
                   help="global ranks that profile (default 0)")
    g.add_argument("--log-world-size-to-tensorboard", action="store_true")
    _add_switch(g, "log-loss-scale-to-tensorboard",
                "write the loss scale (1 without --fp16) with the per-iteration scalars "
                "(default, as in Megatron-LM)", "do not write the loss scale")
    _add_switch(g, "log-learning-rate-to-tensorboard",
                "write the learning rate with the per-iteration scalars (default)",
                "do not write the learning rate")


def add_growth_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("growth in one run")
    g.add_argument("--grow-at-tokens",
                   help="tokens to train the small model before growing, or 'auto' (guideline)")
    g.add_argument("--stacking-list", help="source layer per target layer, e.g. '0-5*4'")
    g.add_argument("--target-num-layers", type=int,
                   help="default: the --stacking-list's length (given, it must equal it)")
    g.add_argument("--growth-operator", default="stack", choices=["stack", "zero", "random", "learn"],
                   help="depth operator; 'learn' is G_learn (LiGO-style maps trained first, "
                        "widths too)")
    g.add_argument("--target-hidden-size", type=int, help="width growth: the grown model's")
    g.add_argument("--target-ffn-hidden-size", type=int)
    g.add_argument("--target-num-attention-heads", type=int,
                   help="default: the source's; head_dim stays fixed, so set it with "
                        "--target-hidden-size")
    g.add_argument("--target-num-query-groups", type=int,
                   help="default: the source's (multi-head attention stays multi-head)")
    g.add_argument("--growth-width-operator", choices=["direct", "zero", "random"],
                   help="width operator (default direct: function preserving)")
    g.add_argument("--learn-steps", type=int, default=100,
                   help="G_learn: training steps of the growth maps before materialising")
    g.add_argument("--learn-lr", type=float, default=1e-3, help="G_learn: learning rate of the maps")
    g.add_argument("--growth-mask-iters", type=int,
                   help="G_random, MSG-style: scale what growth added (the fresh layers' "
                        "attention and MLP outputs; new heads, FFN neurons and hidden units) by "
                        "a factor rising from 0 at the growth point to 1 over this many "
                        "iterations (the grown model starts as the small one); in a growth run, "
                        "or training a checkpoint grown with --operator random or "
                        "--width-operator random (about half the iterations after growth did "
                        "best in benchmarks/growth/msg)")
    g.add_argument("--target-tensor-model-parallel-size", type=int)
    g.add_argument("--target-pipeline-model-parallel-size", type=int)
    g.add_argument("--target-num-layers-per-virtual-pipeline-stage", type=int)
    add_target_pipeline_split_args(g, "--account-for-*-in-pipeline-split apply to both phases")
    g.add_argument("--lr-after-growth", type=float)
    g.add_argument("--lr-warmup-iters-after-growth", type=int)


def add_target_pipeline_split_args(group, note: str) -> None:
    """The grown model's uneven pipeline stages (growth in one run, tools/grow_checkpoint.py,
    tools/plan.py); `note` says where the --account-for-* flags come from."""
    group.add_argument("--target-decoder-first-pipeline-num-layers", type=int,
                       help=f"the grown model's layers on its first pipeline stage (default: an "
                            f"even split; {note})")
    group.add_argument("--target-decoder-last-pipeline-num-layers", type=int,
                       help="the grown model's layers on its last pipeline stage")
    group.add_argument("--target-num-virtual-stages-per-pipeline-rank", type=int,
                       help="the grown model's interleaved chunks per stage (with uneven stages, "
                            "or instead of --target-num-layers-per-virtual-pipeline-stage)")


# Megatron-LM flags that ask for what megastack always does: accepted, so that Megatron scripts
# run unchanged, and logged once.
ALWAYS_SO_FLAGS = {
    "use_mcore_models": ("--use-mcore-models", "megatron-core models are the only ones"),
    "log_throughput": ("--log-throughput", "throughput is always logged (TFLOP/s on GPU)"),
    "attention_softmax_in_fp32": ("--attention-softmax-in-fp32",
                                  "megatron-core's attention softmax runs in fp32 by default"),
    "no_persist_layer_norm": ("--no-persist-layer-norm",
                              "megastack builds megatron-core without the persistent LayerNorm"),
    "legacy_tokenizer": ("--legacy-tokenizer", "megastack's tokenizers are megatron-core "
                         "MegatronLegacyTokenizer classes"),
    "use_cpu_initialization": ("--use-cpu-initialization", "megastack initialises the weights "
                               "itself, to the same values on any device and layout"),
    "accumulate_allreduce_grads_in_fp32": (
        "--accumulate-allreduce-grads-in-fp32",
        "gradients are accumulated and reduced in fp32 unless --grad-reduce-in-bf16"),
    "log_batch_size_to_tensorboard": (
        "--log-batch-size-to-tensorboard", "the global batch size is always written"),
    "log_validation_ppl_to_tensorboard": (
        "--log-validation-ppl-to-tensorboard", "the validation perplexity is always written"),
    "no_create_attention_mask_in_dataloader": (
        "--no-create-attention-mask-in-dataloader",
        "batches carry an attention mask only with --reset-attention-mask"),
    "use_dist_ckpt": ("--use-dist-ckpt", "checkpoints are always megatron-core distributed "
                      "(torch_dist) ones"),
    "no_one_logger": ("--no-one-logger", "megastack sends no one-logger telemetry"),
    **{name.replace("-", "_"): (f"--{name}", "megastack builds megatron-core without this fusion")
       for name in ("no-masked-softmax-fusion", "no-bias-gelu-fusion", "no-bias-swiglu-fusion",
                    "no-bias-dropout-fusion", "no-rope-fusion", "no-gradient-accumulation-fusion")},
}

# Megatron-LM flags megastack cannot honour: refused with the reason and what to use instead,
# rather than argparse's bare "unrecognized arguments".
_NO_FSDP = ("FSDP is not implemented: use --use-distributed-optimizer (ZeRO-1) with "
            "tensor/pipeline parallelism")
_TIMERS = ("megastack times each iteration's forward-backward and optimizer step "
           "(--log-timers-to-tensorboard): drop it")
_ONE_LR = ("one LR schedule drives all parameters (a separate LR for the embedding and output "
           "layer is not implemented)")
_NO_RERUN = ("megastack does not re-run iterations to check their results (Megatron-LM's rerun "
             "state machine); --check-for-nan-in-loss-and-grad stops a run whose loss or grad "
             "norm is not finite")
_FP32_OPTIMIZER = ("Transformer Engine's precision-aware optimizer is not wired: main weights, "
                   "gradients and Adam moments are fp32")
# Megatron-LM's optimizer dtypes: accepted as fp32 (what megastack keeps), refused otherwise.
_FP32_ONLY_FLAGS = ("main_grads_dtype", "main_params_dtype", "exp_avg_dtype", "exp_avg_sq_dtype")
UNSUPPORTED_FLAGS = {  # attr: (flag, why and what instead, number of values it takes)
    "use_flash_attn": ("--use-flash-attn", "the attention kernel comes with --transformer-impl "
                       "(Transformer Engine picks flash attention when it can): drop it", 0),
    "fp8_format": ("--fp8-format", "FP8 training is not implemented: use --bf16", 1),
    "tp_comm_overlap": ("--tp-comm-overlap", "Transformer Engine's userbuffer overlap of the "
                        "tensor-parallel communication is not wired: drop it", 0),
    "apply_layernorm_1p": ("--apply-layernorm-1p", "zero-centred norm weights are not among "
                           "megastack's architectures", 0),
    "init_method_xavier_uniform": ("--init-method-xavier-uniform", "weights are initialised "
                                   "normal with --init-method-std", 0),
    "pipeline_model_parallel_layout": ("--pipeline-model-parallel-layout", "custom pipeline "
                                       "layouts are not implemented: split the layers unevenly "
                                       "with --decoder-first-pipeline-num-layers / "
                                       "--decoder-last-pipeline-num-layers", 1),
    "num_experts": ("--num-experts", "megastack trains dense GPT models (mixture-of-experts "
                    "layers are not implemented)", 1),
    "use_torch_fsdp2": ("--use-torch-fsdp2", _NO_FSDP, 0),
    "use_megatron_fsdp": ("--use-megatron-fsdp", _NO_FSDP, 0),
    "one_logger": ("--one-logger", "one-logger telemetry is not part of megastack: drop it", 0),
    "use_legacy_models": ("--use-legacy-models", "megastack builds megatron-core models only: "
                          "drop it", 0),
    "auto_detect_ckpt_format": ("--auto-detect-ckpt-format", "megastack reads torch_dist "
                                "checkpoints only (Megatron-LM's default format): drop it, and "
                                "convert a legacy checkpoint with Megatron-LM first", 0),
    "ckpt_convert_format": ("--ckpt-convert-format", "megastack writes torch_dist checkpoints "
                            "only: convert with Megatron-LM", 1),
    "dist_ckpt_strictness": ("--dist-ckpt-strictness", "checkpoints load strictly (a missing "
                             "or unexpected tensor is an error naming it): drop it", 1),
    "timing_log_level": ("--timing-log-level", _TIMERS, 1),
    "timing_log_option": ("--timing-log-option", _TIMERS, 1),
    "log_straggler": ("--log-straggler", "straggler detection is not implemented: compare the "
                      "ranks' iteration times with --log-timers-to-tensorboard", 0),
    "decoupled_lr": ("--decoupled-lr", _ONE_LR, 1),
    "decoupled_min_lr": ("--decoupled-min-lr", _ONE_LR, 1),
    "check_for_spiky_loss": ("--check-for-spiky-loss", _NO_RERUN, 0),
    "check_for_large_grads": ("--check-for-large-grads", _NO_RERUN, 0),
    "log_energy": ("--log-energy", "energy logging (NVML) is not implemented: drop it", 0),
    "trust_remote_code": ("--trust-remote-code", "tokenizers load from local files without "
                          "running code from them: drop it", 0),
    "use_precision_aware_optimizer": ("--use-precision-aware-optimizer", _FP32_OPTIMIZER, 0),
    "batch_size": ("--batch-size", "Megatron-LM's old name: use --micro-batch-size (and "
                   "--global-batch-size)", 1),
    "model_parallel_size": ("--model-parallel-size", "Megatron-LM's old name: use "
                            "--tensor-model-parallel-size", 1),
    "warmup": ("--warmup", "Megatron-LM's old flag: use --lr-warmup-fraction or "
               "--lr-warmup-iters", 1),
    "checkpoint_activations": ("--checkpoint-activations", "Megatron-LM's old name: use "
                               "--recompute-activations or --recompute-granularity full", 0),
    "overlap_param_gather_with_optimizer_step": (
        "--overlap-param-gather-with-optimizer-step", "Megatron-LM allows it only without "
        "distributed checkpointing, and megastack's checkpoints are distributed ones: use "
        "--overlap-param-gather (with an interleaved schedule every chunk's gathers start at "
        "the schedule's aligned points)", 0),
    "tiktoken_pattern": ("--tiktoken-pattern", "TikTokenizer is not among megastack's "
                         "tokenizers: use --tokenizer-type HuggingFaceTokenizer", 1),
}


def add_megatron_compat_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Megatron-LM flags with nothing to change here")
    for attr, (flag, why) in ALWAYS_SO_FLAGS.items():
        g.add_argument(flag, dest=attr, action="store_true", help=why)
    for attr, (flag, _, nargs) in UNSUPPORTED_FLAGS.items():
        if nargs:
            p.add_argument(flag, dest=attr, nargs=nargs, help=argparse.SUPPRESS)
        else:
            p.add_argument(flag, dest=attr, action="store_true", help=argparse.SUPPRESS)
    # Megatron-LM's older spelling of --position-embedding-type rope, and its switch for
    # learned positions (megatron-core models take theirs from --position-embedding-type).
    g.add_argument("--use-rotary-position-embeddings", action="store_true",
                   help="same as --position-embedding-type rope")
    g.add_argument("--no-position-embedding", action="store_true",
                   help="with rotary positions (nothing to change); otherwise use "
                        "--position-embedding-type none")
    g.add_argument("--local-rank", "--local_rank", type=int,
                   help="set by torch.distributed.launch: must agree with LOCAL_RANK")
    g.add_argument("--distributed-backend", choices=["nccl", "gloo"],
                   help="nccl on GPUs and gloo on CPU, the only pairs megastack runs")
    g.add_argument("--recompute-activations", action="store_true",
                   help="same as --recompute-granularity selective")
    g.add_argument("--rerun-mode", choices=["disabled", "validate_results", "report_stats"],
                   help="only 'disabled': iterations are not re-run to validate results")
    for attr in _FP32_ONLY_FLAGS:
        p.add_argument("--" + attr.replace("_", "-"), dest=attr, help=argparse.SUPPRESS)
    # Megatron-LM's rotary fraction: only the value megastack builds is taken.
    p.add_argument("--rotary-percent", type=float, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m megastack.pretrain",
        description="GPT pre-training on megatron-core (launch with torchrun for several ranks)",
    )
    for add in (add_model_args, add_parallel_args, add_training_args, add_data_args,
                add_checkpoint_args, add_logging_args, add_growth_args, add_megatron_compat_args):
        add(p)
    return p


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        from megastack.training.unknown_flags import explain

        listed = (o for a in parser._actions if a.help != argparse.SUPPRESS
                  for o in a.option_strings)
        detail = explain(unknown, listed)
        parser.error(f"unrecognized arguments: {' '.join(unknown)}"
                     + (f"\n{detail}" if detail else ""))
    return args


_MODEL_FLAGS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                "kv_channels", "num_query_groups", "normalization", "norm_epsilon",
                "position_embedding_type", "rotary_base", "rope_scaling", "rope_scaling_factor",
                "seq_length", "max_position_embeddings", "init_method_std",
                "embedding_init_method_std", "attention_dropout", "hidden_dropout")


def _decreased_global_batch_size(gbs: int, mbs: int, dp: int,
                                 rampup: Optional[list[int]]) -> int:
    """Megatron-LM's --decrease-batch-size-if-needed: the largest multiple of one micro-batch
    per data-parallel replica that is not above --global-batch-size."""
    _check(rampup is None, "--decrease-batch-size-if-needed with --rampup-batch-size: the ramp's "
                           "batch sizes are fixed; drop one of them")
    _check(gbs >= mbs * dp,
           f"--decrease-batch-size-if-needed: --global-batch-size {gbs} is smaller than one "
           f"micro-batch per data-parallel replica ({mbs} x {dp} = {mbs * dp}): lower "
           f"--micro-batch-size or launch fewer data-parallel replicas")
    decreased = gbs // (mbs * dp) * (mbs * dp)
    logger.warning("--decrease-batch-size-if-needed: training with global batch %d instead of "
                   "--global-batch-size %d, which --micro-batch-size %d x data-parallel size %d "
                   "does not divide", decreased, gbs, mbs, dp)
    return decreased


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Pad the vocabulary like Megatron, but to lcm(divisible_by, TP) rather than
    divisible_by * TP, so the padded size (and so the checkpoint) does not change with TP."""
    multiple = math.lcm(divisible_by, tp)
    return int(math.ceil(vocab_size / multiple) * multiple)


# Without --model the flags mean what they mean to Megatron-LM, whose defaults are GPT-2's
# (a Megatron script that passes no --swiglu gets GELU and dropout 0.1, not megastack's
# Llama-style presets).
MEGATRON_MODEL_DEFAULTS = dict(normalization="LayerNorm", position_embedding_type="learned_absolute",
                               swiglu=False, add_bias_linear=True,
                               untie_embeddings_and_output_weights=False,
                               attention_dropout=0.1, hidden_dropout=0.1)


def _megatron_ffn_hidden_size(hidden_size: int, swiglu: bool) -> int:
    """Megatron-LM's --ffn-hidden-size default: 4h, or 2/3 of it rounded down to 64 for SwiGLU."""
    return int(4 * hidden_size * 2 / 3 / 64) * 64 if swiglu else 4 * hidden_size


def _checkpoint_model_flags(args: argparse.Namespace) -> dict:
    """--use-checkpoint-args: the --load checkpoint's model, in place of a preset."""
    from megastack.checkpoint.training_checkpoint import read_model_record

    _check(args.load is not None, "--use-checkpoint-args needs --load CHECKPOINT")
    _check(args.model is None, "give --model or --use-checkpoint-args, not both: the checkpoint "
                               "names the architecture")
    return read_model_record(args.load)


def _checkpoint_parallel_flags(args: argparse.Namespace) -> None:
    """--use-mp-args-from-checkpoint-args: the --load checkpoint's layout replaces the layout
    flags, as in Megatron-LM."""
    from megastack.checkpoint.training_checkpoint import read_parallel_record

    _check(args.use_checkpoint_args, "--use-mp-args-from-checkpoint-args goes with "
                                     "--use-checkpoint-args (as in Megatron-LM): add it")
    layout = read_parallel_record(args.load)
    logger.info("--use-mp-args-from-checkpoint-args: %s", ", ".join(
        f"--{name.replace('_', '-')}" + ("" if value is True else f" {value}")
        for name, value in layout.items() if value not in (None, False)))
    for name, value in layout.items():
        setattr(args, name, value)


def model_config_from_args(args: argparse.Namespace, vocab_size: Optional[int],
                           checkpoint_model: Optional[dict] = None) -> ModelConfig:
    """The model the flags describe, on top of a --model preset, the --load checkpoint's
    model (`checkpoint_model`, --use-checkpoint-args) or Megatron-LM's defaults."""
    if checkpoint_model is not None:
        base = dict(checkpoint_model)
    elif args.model:
        base = dict(PRESETS[args.model])
    else:
        base = dict(MEGATRON_MODEL_DEFAULTS)
    for name in _MODEL_FLAGS:
        value = getattr(args, name)
        if value is not None:
            base[name] = value
    if (args.num_query_groups is not None and not args.group_query_attention and not args.model
            and checkpoint_model is None):
        raise ValueError("--num-query-groups needs --group-query-attention (as in Megatron-LM)")
    if args.group_query_attention and args.num_query_groups is None:
        # Megatron-LM's --num-query-groups default is one group; a preset's own grouping stands.
        base.setdefault("num_query_groups", 1)
    if args.swiglu is not None:
        base["swiglu"] = True
    if args.disable_bias_linear is not None:
        base["add_bias_linear"] = False
    if args.add_qkv_bias is not None:
        base["add_qkv_bias"] = True
    if args.qk_layernorm is not None:
        base["qk_layernorm"] = True
    if args.untie_embeddings_and_output_weights is not None:
        base["untie_embeddings_and_output_weights"] = True
    missing = [f"--{n.replace('_', '-')}" for n in ("num_layers", "hidden_size",
                                                    "num_attention_heads", "seq_length")
               if n not in base]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}: give them or a preset with --model "
                         f"({', '.join(sorted(PRESETS))})")
    if not args.model and checkpoint_model is None and "ffn_hidden_size" not in base:
        base["ffn_hidden_size"] = _megatron_ffn_hidden_size(base["hidden_size"], base["swiglu"])
    if vocab_size is not None:
        base["vocab_size"] = padded_vocab_size(
            vocab_size, args.make_vocab_size_divisible_by, args.tensor_model_parallel_size
        )
    model = ModelConfig.from_dict(base)
    _check(args.rope_scaling_factor is None or model.rope_scaling,
           "--rope-scaling-factor goes with --use-rope-scaling")
    return model


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def per_split_data_path(args: argparse.Namespace) -> Optional[tuple[tuple[str, ...], ...]]:
    """(train, valid, test) prefixes of --train/--valid/--test-data-path, or None when none
    of them is given."""
    given = (args.train_data_path, args.valid_data_path, args.test_data_path)
    if all(words is None for words in given):
        return None
    return tuple(tuple(words or ()) for words in given)


def _read_data_args_files(args: argparse.Namespace) -> None:
    """--data-args-path / --per-split-data-args-path: the lists their files hold take the place
    of --data-path / --train/--valid/--test-data-path (read once: `args` keeps the lists)."""
    from megastack.data.data_args_files import (read_data_args_file,
                                                read_per_split_data_args_file)

    if args.data_args_path is not None:
        _check(not args.data_path, "give --data-path or --data-args-path, not both")
        _check(args.per_split_data_args_path is None,
               "give --data-args-path (with --split) or --per-split-data-args-path, not both")
        path, args.data_args_path = args.data_args_path, None
        args.data_path = read_data_args_file(path)
        _check_prefix_files(f"--data-args-path {path}:", args.data_path)
    if args.per_split_data_args_path is not None:
        _check(per_split_data_path(args) is None,
               "give --train/--valid/--test-data-path or --per-split-data-args-path, not both")
        path, args.per_split_data_args_path = args.per_split_data_args_path, None
        words = read_per_split_data_args_file(path)
        for key, split_words in zip(("train", "valid", "test"), words):
            _check_prefix_files(f"--per-split-data-args-path {path}: \"{key}\":", split_words)
        args.train_data_path, args.valid_data_path, args.test_data_path = words


def _check_prefix_files(source: str, words) -> None:
    for prefix in (p for p in words if not _is_number(p)):
        for ext in (".bin", ".idx"):
            _check(os.path.exists(prefix + ext),
                   f"{source} {prefix}: {prefix + ext} does not exist; run "
                   f"tools/preprocess_data.py --output-prefix ... first, and pass the prefix "
                   f"without the extension (e.g. data/corpus_text_document)")


def _validate_data(args: argparse.Namespace) -> None:
    _check(args.num_dataset_builder_threads >= 1,
           f"--num-dataset-builder-threads must be >= 1, got {args.num_dataset_builder_threads}")
    if args.mock_data:
        _check(not args.multiple_validation_sets,
               "--multiple-validation-sets needs --valid-data-path datasets, not --mock-data")
        return
    _read_data_args_files(args)
    per_split = per_split_data_path(args)
    if per_split is not None:
        from megastack.data.datasets import PER_SPLIT_FLAGS

        _check(not args.data_path, f"give --data-path (with --split) or the per-split "
                                   f"{'/'.join(PER_SPLIT_FLAGS)}, not both")
        _check(bool(per_split[0]),
               "--train-data-path needs dataset prefixes" if args.train_data_path is not None
               else "--train-data-path is needed with --valid-data-path or --test-data-path")
        sources = list(zip(PER_SPLIT_FLAGS, per_split))
    else:
        _check(bool(args.data_path),
               "no training data: give --data-path PREFIX (a preprocessed .bin/.idx prefix from "
               "tools/preprocess_data.py) or --mock-data for synthetic tokens")
        sources = [("--data-path", args.data_path)]
    if args.multiple_validation_sets:
        # megatron-core keeps validation datasets apart only when they come per split.
        _check(per_split is not None and bool(per_split[1]),
               "--multiple-validation-sets evaluates each --valid-data-path dataset on its own: "
               "give the validation datasets with --valid-data-path (and the training ones with "
               "--train-data-path) instead of --data-path and --split")
        _check(not any(_is_number(w) for w in per_split[1]),
               f"--valid-data-path {' '.join(per_split[1])}: weights mean nothing with "
               f"--multiple-validation-sets (each dataset is evaluated on its own): drop them")
    _check(args.tokenizer_type is not None,
           f"{sources[0][0]} needs --tokenizer-type (the tokenizer the data was preprocessed "
           f"with)")
    for flag, words in sources:
        _check_prefix_files(flag, words)


def _schedule_lengths(args: argparse.Namespace, batches: BatchSchedule,
                      train_iters: int) -> tuple[int, Optional[int]]:
    """(warmup iterations, decay iterations or None for --train-iters) from whichever of
    Megatron-LM's iteration, sample and fraction flags were given."""
    warmup, decay = args.lr_warmup_iters, args.lr_decay_iters
    if args.lr_warmup_samples is not None or args.lr_decay_samples is not None:
        # Megatron-LM's rule: a schedule in samples goes with --train-samples, and only then.
        _check(args.train_samples is not None,
               "--lr-warmup-samples/--lr-decay-samples go with --train-samples (as in "
               "Megatron-LM); with --train-iters or --train-tokens use --lr-warmup-iters/"
               "--lr-decay-iters")
        _check(decay is None and warmup == 0,
               "give the LR schedule in samples (--lr-*-samples) or in iterations "
               "(--lr-*-iters), not both")
        if args.lr_decay_samples is not None:
            _check(args.lr_decay_samples >= 1,
                   f"--lr-decay-samples must be >= 1, got {args.lr_decay_samples}")
            decay = max(1, batches.iterations_nearest(args.lr_decay_samples))
        if args.lr_warmup_samples is not None:
            _check(args.lr_warmup_samples >= 0,
                   f"--lr-warmup-samples must be >= 0, got {args.lr_warmup_samples}")
            warmup = batches.iterations_nearest(args.lr_warmup_samples)
    if args.lr_warmup_fraction is not None:
        _check(args.lr_warmup_iters == 0 and args.lr_warmup_samples is None,
               "give one of --lr-warmup-fraction, --lr-warmup-iters and --lr-warmup-samples")
        _check(0 <= args.lr_warmup_fraction < 1,
               f"--lr-warmup-fraction must be in [0, 1), got {args.lr_warmup_fraction}")
        decay_iters = decay or train_iters
        if batches.rampup is None:
            warmup = round(args.lr_warmup_fraction * decay_iters)
        else:  # Megatron-LM's fraction is of the decay's samples, not of its iterations
            warmup = batches.iterations_nearest(
                args.lr_warmup_fraction * batches.samples_after(decay_iters))
    return warmup, decay


def _wsd_samples_to_iterations(args: argparse.Namespace, batches: BatchSchedule) -> None:
    samples = args.lr_wsd_decay_samples
    if samples is None:
        return
    _check(args.train_samples is not None,
           "--lr-wsd-decay-samples goes with --train-samples (as in Megatron-LM); with "
           "--train-iters or --train-tokens use --lr-wsd-decay-iters")
    _check(args.lr_wsd_decay_iters is None,
           "give --lr-wsd-decay-samples or --lr-wsd-decay-iters, not both")
    _check(samples >= 1, f"--lr-wsd-decay-samples must be >= 1, got {samples}")
    args.lr_wsd_decay_iters = max(1, batches.iterations_nearest(samples))
    args.lr_wsd_decay_samples = None  # converted once


def _validate_schedule(args: argparse.Namespace, train_iters: int, warmup_iters: int,
                       lr_decay_iters: Optional[int]) -> None:
    _check(lr_decay_iters is None or lr_decay_iters >= 1,
           f"--lr-decay-iters must be >= 1, got {lr_decay_iters}")
    decay_iters = lr_decay_iters or train_iters
    _check(warmup_iters >= 0, f"--lr-warmup-iters must be >= 0, got {warmup_iters}")
    # The flags the user gave, for the messages (samples and fractions became iterations).
    if args.lr_warmup_samples is not None:
        warmup = f"--lr-warmup-samples {args.lr_warmup_samples} ({warmup_iters} iterations)"
    elif args.lr_warmup_fraction is not None:
        warmup = f"--lr-warmup-fraction {args.lr_warmup_fraction} ({warmup_iters} iterations)"
    else:
        warmup = f"--lr-warmup-iters {warmup_iters}"
    decay = ("--lr-decay-samples" if args.lr_decay_samples is not None
             else "--lr-decay-iters, default --train-iters")
    # Megatron-LM refuses these too (its scheduler asserts them).
    _check(args.lr_decay_style == "constant" or warmup_iters < decay_iters,
           f"{warmup} must be smaller than the {decay_iters} iterations of the LR schedule "
           f"({decay}), which include the warmup: shorten the warmup or lengthen the decay")
    _check(0 <= args.min_lr <= args.lr,
           f"--min-lr {args.min_lr} must be between 0 and --lr {args.lr}")
    if args.lr_decay_style == "WSD":
        wsd = args.lr_wsd_decay_iters
        _check(wsd is not None,
               "--lr-decay-style WSD needs --lr-wsd-decay-iters N (or --lr-wsd-decay-samples "
               "with --train-samples): the final annealing (e.g. 10-20% of the run)")
        _check(1 <= wsd <= decay_iters - warmup_iters,
               f"--lr-wsd-decay-iters {wsd} must be between 1 and the {decay_iters - warmup_iters} "
               f"iterations from the end of warmup ({warmup}) to the end of the decay "
               f"({decay}: {decay_iters})")
    _check(not (args.override_opt_param_scheduler and args.use_checkpoint_opt_param_scheduler),
           "give only one of --override-opt_param-scheduler (schedule from the flags) and "
           "--use-checkpoint-opt_param-scheduler (schedule from the checkpoint)")


def _validate_non_persistent(args: argparse.Namespace) -> Optional[str]:
    """The directory of the non-persistent checkpoints, None without them."""
    if args.non_persistent_save_interval is None:
        given = [flag for flag, value in (
            ("--non-persistent-ckpt-type", args.non_persistent_ckpt_type),
            ("--non-persistent-global-ckpt-dir", args.non_persistent_global_ckpt_dir)) if value]
        _check(not given, f"{', '.join(given)} go with --non-persistent-save-interval N")
        return None
    _check(args.non_persistent_save_interval >= 1,
           f"--non-persistent-save-interval must be >= 1, got {args.non_persistent_save_interval}")
    _check(args.non_persistent_ckpt_type in (None, "global"),
           f"--non-persistent-ckpt-type {args.non_persistent_ckpt_type}: only 'global' (a "
           f"directory on the shared filesystem) is implemented; node-local and in-memory copies "
           f"need NVIDIA's resiliency extension")
    _check(args.save is not None, "--non-persistent-save-interval needs --save DIR")
    path = args.non_persistent_global_ckpt_dir or os.path.join(args.save, "non_persistent")
    check_output_dir(f"--non-persistent-global-ckpt-dir {path}", path)
    return path


def _validate_fp16(args: argparse.Namespace) -> None:
    _check(not (args.fp16 and args.bf16), "give one of --fp16 and --bf16")
    if not args.fp16:
        given = ["--" + attr.replace("_", "-") for attr, default in _LOSS_SCALE_DEFAULTS.items()
                 if getattr(args, attr) != default]
        _check(not given, f"{', '.join(given)} set the loss scaling of --fp16 training: add "
                          f"--fp16 or drop them (bf16 and fp32 need no loss scaling)")
        return
    _check(args.loss_scale is None or args.loss_scale > 0,
           f"--loss-scale must be > 0, got {args.loss_scale}")
    _check(0 < args.min_loss_scale <= args.initial_loss_scale,
           f"--min-loss-scale {args.min_loss_scale} must be > 0 and at most --initial-loss-scale "
           f"{args.initial_loss_scale}")
    _check(args.loss_scale_window >= 1,
           f"--loss-scale-window must be >= 1, got {args.loss_scale_window}")
    _check(args.hysteresis >= 1, f"--hysteresis must be >= 1, got {args.hysteresis}")


def _validate_recompute(args: argparse.Namespace) -> Optional[int]:
    """Megatron-LM's recompute flags; returns the --recompute-num-layers to use."""
    if args.recompute_activations:  # Megatron-LM's older spelling of selective recompute
        _check(args.recompute_granularity in (None, "selective"),
               f"--recompute-activations means --recompute-granularity selective, and "
               f"--recompute-granularity {args.recompute_granularity} was given: keep one")
        args.recompute_granularity = "selective"
    if args.recompute_granularity == "full":
        _check(args.recompute_method is not None,
               "--recompute-granularity full needs --recompute-method uniform or block (e.g. "
               "--recompute-method uniform --recompute-num-layers 1 recomputes every layer), "
               "or use --recompute-granularity selective")
        n = 1 if args.recompute_num_layers is None else args.recompute_num_layers
        _check(n >= 1, f"--recompute-num-layers must be >= 1, got {n}")
        return n
    _check(args.recompute_method is None and args.recompute_num_layers is None,
           "--recompute-method and --recompute-num-layers apply to --recompute-granularity full "
           "only: drop them or use --recompute-granularity full")
    if args.recompute_modules is not None:
        _validate_recompute_modules(args)
    return None


# megatron-core's selective recompute modules of dense models; the others belong to MoE and MLA.
_RECOMPUTE_MODULES = ("core_attn", "mlp", "layernorm")


def _validate_recompute_modules(args: argparse.Namespace) -> None:
    modules = args.recompute_modules
    _check(args.recompute_granularity == "selective",
           f"--recompute-modules {' '.join(modules)} choose what selective recompute recomputes: "
           f"add --recompute-granularity selective")
    unknown = [m for m in modules if m not in _RECOMPUTE_MODULES]
    _check(not unknown,
           f"--recompute-modules {' '.join(unknown)}: megastack's dense layers have "
           f"{', '.join(_RECOMPUTE_MODULES)} (moe, moe_act, shared_experts and mla_up_proj "
           f"belong to mixture-of-experts and multi-latent attention)")
    if "layernorm" in modules:
        from megastack.layer_impl import transformer_engine_available

        # megatron-core 0.16.1 recomputes norms through its FP8 path, which imports Transformer
        # Engine (CheckpointWithoutOutput() takes FP8 as on).
        _check(transformer_engine_available(),
               "--recompute-modules layernorm needs Transformer Engine (megatron-core 0.16.1 "
               "recomputes norms through its FP8 code): recompute core_attn and mlp only")


def _check_interleaved_microbatches(parallel: ParallelConfig, model: ModelConfig,
                                    microbatches: int, flag_prefix: str = "") -> None:
    if parallel.virtual_pipeline_size(model.num_layers) is None:
        return
    pp = parallel.pipeline_model_parallel_size
    _check(microbatches % pp == 0,
           f"the interleaved schedule needs the number of micro-batches ({microbatches}) to be a "
           f"multiple of --{flag_prefix}pipeline-model-parallel-size {pp}: raise "
           f"--global-batch-size")


def _check_rampup_layout(rampup: RampUp, gbs: int, mbs: int, dp: int, parallel: ParallelConfig,
                         model: ModelConfig, layout: str = "", flag_prefix: str = "") -> None:
    """Every batch size of the ramp must split into micro-batches at this layout."""
    check_rampup(rampup, gbs, mbs, dp, layout)
    if parallel.virtual_pipeline_size(model.num_layers) is not None:
        pp = parallel.pipeline_model_parallel_size
        start, incr = rampup[0] // (mbs * dp), rampup[1] // (mbs * dp)
        _check(start % pp == 0 and incr % pp == 0,
               f"--rampup-batch-size {' '.join(map(str, rampup))}: the interleaved schedule needs "
               f"every batch of the ramp in a multiple of --{flag_prefix}pipeline-model-parallel-"
               f"size {pp} micro-batches; the start is {start} and the increment {incr} "
               f"micro-batches of {mbs * dp} sequences")


def _check_megatron_compat(args: argparse.Namespace, model: ModelConfig) -> None:
    for attr, (flag, why, _) in UNSUPPORTED_FLAGS.items():
        _check(not getattr(args, attr), f"{flag}: {why}")
    _check(args.rotary_percent is None or args.rotary_percent == 1.0,
           f"--rotary-percent {args.rotary_percent}: only 1.0 (RoPE over the whole head) is "
           f"implemented; drop it")
    _check(args.ckpt_format == "torch_dist",
           f"--ckpt-format {args.ckpt_format}: megastack writes and reads torch_dist "
           f"(megatron-core's distributed checkpoint) only; drop the flag or convert the "
           f"checkpoint with Megatron-LM's tools/checkpoint first")
    _check(not args.no_position_embedding
           or model.position_embedding_type in ("rope", "none"),
           f"--no-position-embedding with {model.position_embedding_type} positions: for a "
           f"model without position embeddings give --position-embedding-type none (or rope)")
    for attr in _FP32_ONLY_FLAGS:
        value = getattr(args, attr)
        _check(value in (None, "fp32"), f"--{attr.replace('_', '-')} {value}: {_FP32_OPTIMIZER}")
    _check(args.rerun_mode in (None, "disabled"),
           f"--rerun-mode {args.rerun_mode}: megastack does not re-run iterations to check their "
           f"results (Megatron-LM's rerun state machine); drop it")
    _check(args.dataloader_type == "single",
           f"--dataloader-type {args.dataloader_type}: megastack reads samples in order from "
           f"the consumed position (Megatron-LM's 'single'); drop the flag")
    _check(not (args.accumulate_allreduce_grads_in_fp32 and args.grad_reduce_in_bf16),
           "--accumulate-allreduce-grads-in-fp32 and --grad-reduce-in-bf16 contradict each "
           "other: keep one")
    if args.local_rank is not None:
        env = os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
        _check(env == str(args.local_rank),
               f"--local-rank {args.local_rank} but LOCAL_RANK={env} in the environment: drop "
               f"the flag (torchrun sets LOCAL_RANK)")
    if args.distributed_backend is not None:
        import torch  # only here: tools/plan.py imports this module without torch

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        _check(args.distributed_backend == backend,
               f"--distributed-backend {args.distributed_backend}: on this machine megastack "
               f"runs {backend} (nccl on GPUs, gloo on CPU); drop the flag")
    for attr, (flag, why) in ALWAYS_SO_FLAGS.items():
        if getattr(args, attr):
            logger.info("%s: nothing to change (%s)", flag, why)


# As Megatron-LM: NCCL's default picks the all-reduce algorithm by message size and topology,
# which changes the order of the sums.
_DETERMINISTIC_NCCL_ALGOS = ("Tree", "Ring", "CollnetDirect", "CollnetChain", "^NVLS")


def _validate_deterministic_mode(args: argparse.Namespace) -> None:
    _check(not args.cross_entropy_loss_fusion,
           "--deterministic-mode with --cross-entropy-loss-fusion: the fused cross-entropy is "
           "not deterministic (as in Megatron-LM); drop one")
    import torch  # only here: tools/plan.py imports this module without torch

    if torch.cuda.is_available():
        algo = os.environ.get("NCCL_ALGO")
        _check(algo in _DETERMINISTIC_NCCL_ALGOS,
               f"--deterministic-mode on GPUs needs NCCL_ALGO set to one of "
               f"{', '.join(_DETERMINISTIC_NCCL_ALGOS)} (e.g. NCCL_ALGO=Ring), got "
               f"{algo if algo is not None else 'none'}")


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def build_pretrain_config(args: argparse.Namespace, vocab_size: Optional[int]) -> PretrainConfig:
    """Validate everything that can be checked before training and return the typed config."""
    _validate_data(args)
    _check(not (args.use_checkpoint_args and args.grow_at_tokens is not None),
           "--use-checkpoint-args does not apply to growth in one run (its --load holds either "
           "phase's model): give the small model's flags (--model ...)")
    if args.use_rotary_position_embeddings:
        _check(args.position_embedding_type in (None, "rope"),
               f"--use-rotary-position-embeddings and --position-embedding-type "
               f"{args.position_embedding_type} contradict each other: keep one")
        args.position_embedding_type = "rope"  # Megatron-LM's older spelling
    model = model_config_from_args(
        args, vocab_size, _checkpoint_model_flags(args) if args.use_checkpoint_args else None)
    if args.use_mp_args_from_checkpoint_args:
        _checkpoint_parallel_flags(args)
    _check_megatron_compat(args, model)
    parallel = ParallelConfig(
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        num_layers_per_virtual_pipeline_stage=args.num_layers_per_virtual_pipeline_stage,
        sequence_parallel=args.sequence_parallel,
        use_distributed_optimizer=args.use_distributed_optimizer,
        decoder_first_pipeline_num_layers=args.decoder_first_pipeline_num_layers,
        decoder_last_pipeline_num_layers=args.decoder_last_pipeline_num_layers,
        account_for_embedding_in_pipeline_split=args.account_for_embedding_in_pipeline_split,
        account_for_loss_in_pipeline_split=args.account_for_loss_in_pipeline_split,
        num_virtual_stages_per_pipeline_rank=args.num_virtual_stages_per_pipeline_rank,
    )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    parallel.validate(model, world_size)
    parallel = parallel.with_layers_per_virtual_stage(model.num_layers)
    dp = world_size // (parallel.tensor_model_parallel_size * parallel.pipeline_model_parallel_size)
    mbs = args.micro_batch_size
    _check(mbs >= 1, f"--micro-batch-size must be >= 1, got {mbs}")
    gbs = args.global_batch_size if args.global_batch_size is not None else mbs * dp
    _check(gbs >= 1, f"--global-batch-size must be >= 1, got {gbs}")
    if args.decrease_batch_size_if_needed and gbs % (mbs * dp):
        gbs = _decreased_global_batch_size(gbs, mbs, dp, args.rampup_batch_size)
    _check(gbs % (mbs * dp) == 0,
           f"--global-batch-size {gbs} is not divisible by --micro-batch-size {mbs} x data-parallel "
           f"size {dp}: use a global batch that is a multiple of {mbs * dp}")
    _check_interleaved_microbatches(parallel, model, gbs // (mbs * dp))
    rampup = tuple(args.rampup_batch_size) if args.rampup_batch_size is not None else None
    if rampup is not None:
        _check_rampup_layout(rampup, gbs, mbs, dp, parallel, model)
    batches = BatchSchedule(gbs, rampup)
    lengths = [flag for flag, value in (("--train-iters", args.train_iters),
                                        ("--train-samples", args.train_samples),
                                        ("--train-tokens", args.train_tokens)) if value is not None]
    _check(bool(lengths), "give the run's length: --train-iters, --train-samples or --train-tokens")
    _check(len(lengths) == 1, f"give only one of {', '.join(lengths)}")
    train_iters = args.train_iters
    if args.train_samples is not None:
        train_iters = batches.iterations_within(args.train_samples)  # Megatron-LM's rule
        _check(train_iters >= 1, f"--train-samples {args.train_samples} is less than the first "
                                 f"global batch ({batches.batch_size(0)} samples)")
    elif args.train_tokens is not None:
        train_iters = batches.iterations_to_reach(math.ceil(args.train_tokens / model.seq_length))
    _check(train_iters >= 1, f"--train-iters must be >= 1, got {train_iters}")
    _check(args.log_interval >= 1, "--log-interval must be >= 1")
    _check(args.tensorboard_log_interval >= 1, "--tensorboard-log-interval must be >= 1")
    _check(args.manual_gc_interval >= 0, "--manual-gc-interval must be >= 0")
    _check(not args.log_progress or args.save,
           "--log-progress writes progress.txt into the --save directory: give --save")
    if args.profile:
        _check(1 <= args.profile_step_start < args.profile_step_end,
               f"--profile-step-start {args.profile_step_start} and --profile-step-end "
               f"{args.profile_step_end}: the window is [start, end) with 1 <= start < end")
        _check(not args.use_pytorch_profiler or args.tensorboard_dir,
               "--profile --use-pytorch-profiler writes its trace into --tensorboard-dir: give "
               "one")
        if not args.use_pytorch_profiler:
            import torch  # only here: tools/plan.py imports this module without torch

            _check(torch.cuda.is_available(),
                   "--profile without --use-pytorch-profiler marks an Nsight Systems capture "
                   "range, which needs CUDA: add --use-pytorch-profiler on CPU")
    _check(0 <= args.lr_warmup_init <= args.lr,
           f"--lr-warmup-init {args.lr_warmup_init} must be in [0, --lr {args.lr}]")
    _check(args.optimizer == "adam" or not args.use_distributed_optimizer,
           f"--optimizer {args.optimizer}: megatron-core's distributed optimizer shards Adam "
           f"only; drop --use-distributed-optimizer or use --optimizer adam")
    wd_bounds = (args.start_weight_decay, args.end_weight_decay)
    if args.weight_decay_incr_style == "constant":
        _check(wd_bounds == (None, None),
               "--start-weight-decay/--end-weight-decay go with --weight-decay-incr-style "
               "linear or cosine; for a constant weight decay give --weight-decay only")
    else:
        _check(None not in wd_bounds and min(wd_bounds) >= 0,
               f"--weight-decay-incr-style {args.weight_decay_incr_style} needs "
               f"--start-weight-decay and --end-weight-decay (>= 0)")
    _check(args.tensorboard_queue_size >= 1, "--tensorboard-queue-size must be >= 1")
    _check(args.eval_interval >= 0,
           f"--eval-interval must be >= 0 (0: no evaluation), got {args.eval_interval}")
    _check(args.eval_iters >= 0, f"--eval-iters must be >= 0, got {args.eval_iters}")
    recompute_num_layers = _validate_recompute(args)
    warmup_iters, lr_decay_iters = _schedule_lengths(args, batches, train_iters)
    _wsd_samples_to_iterations(args, batches)
    _validate_schedule(args, train_iters, warmup_iters, lr_decay_iters)
    _check(args.distributed_timeout_minutes >= 1,
           f"--distributed-timeout-minutes must be >= 1, got {args.distributed_timeout_minutes}")
    _check(args.context_parallel_size == 1,
           f"--context-parallel-size {args.context_parallel_size}: context parallelism is not "
           f"implemented; use 1")
    _check(not args.grad_reduce_in_bf16 or args.bf16,
           "--grad-reduce-in-bf16 needs --bf16")
    _validate_fp16(args)
    if args.deterministic_mode:
        _validate_deterministic_mode(args)
    non_persistent_dir = _validate_non_persistent(args)
    _check(args.ckpt_step is None or (args.load is not None and args.ckpt_step >= 0),
           f"--ckpt-step {args.ckpt_step} names an iteration (>= 0) of the --load checkpoints: "
           f"give --load")
    _check(args.check_weight_hash_interval is None or args.check_weight_hash_interval >= 1,
           f"--check-weight-hash-across-dp-replicas-interval must be >= 1, got "
           f"{args.check_weight_hash_interval}")
    if args.cross_entropy_loss_fusion and args.cross_entropy_fusion_impl == "te":
        import importlib.util

        _check(importlib.util.find_spec("transformer_engine") is not None,
               "--cross-entropy-fusion-impl te needs Transformer Engine, which is not installed: "
               "use --cross-entropy-fusion-impl native")
    _check(args.ddp_bucket_size is None or args.ddp_bucket_size >= 1,
           f"--ddp-bucket-size must be >= 1, got {args.ddp_bucket_size}")
    _check(args.growth_mask_iters is None or args.growth_mask_iters >= 1,
           f"--growth-mask-iters must be >= 1, got {args.growth_mask_iters}")
    _check(args.ddp_num_buckets is None or args.ddp_num_buckets >= 1,
           f"--ddp-num-buckets must be >= 1, got {args.ddp_num_buckets}")
    _check(args.ddp_bucket_size is None or args.ddp_num_buckets is None,
           "--ddp-bucket-size and --ddp-num-buckets both set the bucket size: give one")
    for flag, value in (("--ddp-bucket-size", args.ddp_bucket_size),
                        ("--ddp-num-buckets", args.ddp_num_buckets)):
        _check(value is None or args.overlap_grad_reduce,
               f"{flag} applies with --overlap-grad-reduce (without it the gradients are reduced "
               f"in one bucket): add --overlap-grad-reduce or drop {flag}")
    _check(not args.ddp_pad_buckets_for_high_nccl_busbw or args.use_distributed_optimizer,
           "--ddp-pad-buckets-for-high-nccl-busbw pads the distributed optimizer's buckets: add "
           "--use-distributed-optimizer or drop it")
    _check(not args.overlap_param_gather or (args.use_distributed_optimizer
                                             and args.overlap_grad_reduce),
           "--overlap-param-gather gathers the distributed optimizer's parameter shards and, "
           "as in Megatron-LM, goes with the overlapped gradient reduction: add "
           "--use-distributed-optimizer and --overlap-grad-reduce, or drop it")
    _check(args.exit_duration_in_mins is None or args.exit_duration_in_mins > 0,
           f"--exit-duration-in-mins must be > 0, got {args.exit_duration_in_mins}")
    _check(args.save_interval is None or args.save is not None,
           "--save-interval needs --save DIR")
    _check(not args.async_save or args.save is not None,
           "--async-save writes the --save checkpoints in the background: give --save DIR")
    for flag, value in (("--save-interval", args.save_interval),
                        ("--exit-interval", args.exit_interval),
                        ("--save-retain-interval", args.save_retain_interval)):
        _check(value is None or value >= 1, f"{flag} must be >= 1, got {value}")
    if args.save_retain_interval is not None:
        interval = "" if args.save_interval is None else f" {args.save_interval}"
        _check(args.save_interval is not None and
               args.save_retain_interval % args.save_interval == 0,
               f"--save-retain-interval {args.save_retain_interval} must be a multiple of "
               f"--save-interval{interval} (as in Megatron-LM): the checkpoints it keeps are "
               f"among those saved")
    _check(all(n >= 0 for n in args.iterations_to_skip),
           f"--iterations-to-skip {' '.join(map(str, args.iterations_to_skip))}: iterations "
           f"are counted from 0")
    if args.wandb_project is not None:
        from megastack.training.wandb_writer import wandb_available

        _check(wandb_available(),
               f"--wandb-project {args.wandb_project}: the wandb package is not installed "
               f"(pip install wandb), or log to --tensorboard-dir only")
    else:
        _check(args.wandb_exp_name is None and args.wandb_save_dir is None
               and args.wandb_entity is None,
               "--wandb-exp-name, --wandb-save-dir and --wandb-entity go with --wandb-project")
    if args.record_memory_history:
        import torch  # only here: tools/plan.py imports this module without torch

        _check(torch.cuda.is_available(),
               "--record-memory-history records the CUDA allocator: it needs a GPU")
    for flag, path in (("--save", args.save), ("--tensorboard-dir", args.tensorboard_dir),
                       ("--data-cache-path", args.data_cache_path),
                       ("--wandb-save-dir", args.wandb_save_dir),
                       ("--memory-snapshot-path", os.path.dirname(args.memory_snapshot_path)
                        if args.record_memory_history else None)):
        if path is not None:
            # Refused now, not at the first checkpoint after hours of training.
            check_output_dir(f"{flag} {path}", path or ".")
    train = TrainConfig(
        micro_batch_size=mbs, global_batch_size=gbs, train_iters=train_iters, lr=args.lr,
        min_lr=args.min_lr, lr_warmup_iters=warmup_iters,
        lr_decay_iters=lr_decay_iters, lr_decay_style=args.lr_decay_style,
        weight_decay=args.weight_decay, clip_grad=args.clip_grad, adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2, adam_eps=args.adam_eps, bf16=args.bf16, fp16=args.fp16,
        loss_scale=args.loss_scale, initial_loss_scale=args.initial_loss_scale,
        min_loss_scale=args.min_loss_scale, loss_scale_window=args.loss_scale_window,
        hysteresis=args.hysteresis, seed=args.seed,
        transformer_impl=args.transformer_impl, recompute_granularity=args.recompute_granularity,
        recompute_method=args.recompute_method, recompute_num_layers=recompute_num_layers,
        recompute_modules=(tuple(args.recompute_modules) if args.recompute_modules is not None
                           else None),
        lr_wsd_decay_style=args.lr_wsd_decay_style, lr_wsd_decay_iters=args.lr_wsd_decay_iters,
        override_opt_param_scheduler=args.override_opt_param_scheduler,
        use_checkpoint_opt_param_scheduler=args.use_checkpoint_opt_param_scheduler,
        overlap_grad_reduce=args.overlap_grad_reduce, ddp_bucket_size=args.ddp_bucket_size,
        growth_mask_iters=args.growth_mask_iters,
        ddp_num_buckets=args.ddp_num_buckets,
        ddp_pad_buckets_for_high_nccl_busbw=args.ddp_pad_buckets_for_high_nccl_busbw,
        align_grad_reduce=args.align_grad_reduce,
        overlap_param_gather=args.overlap_param_gather,
        align_param_gather=args.align_param_gather, overlap_p2p_comm=args.overlap_p2p_comm,
        grad_reduce_in_bf16=args.grad_reduce_in_bf16,
        distributed_timeout_minutes=args.distributed_timeout_minutes,
        check_for_nan_in_loss_and_grad=args.check_for_nan_in_loss_and_grad,
        optimizer=args.optimizer, sgd_momentum=args.sgd_momentum,
        lr_warmup_init=args.lr_warmup_init, weight_decay_incr_style=args.weight_decay_incr_style,
        start_weight_decay=args.start_weight_decay, end_weight_decay=args.end_weight_decay,
        manual_gc=args.manual_gc, manual_gc_interval=args.manual_gc_interval,
        manual_gc_eval=args.manual_gc_eval,
        empty_unused_memory_level=args.empty_unused_memory_level, skip_train=args.skip_train,
        calculate_per_token_loss=args.calculate_per_token_loss, rampup_batch_size=rampup,
        cross_entropy_loss_fusion=args.cross_entropy_loss_fusion,
        cross_entropy_fusion_impl=args.cross_entropy_fusion_impl,
        apply_query_key_layer_scaling=args.apply_query_key_layer_scaling,
        check_weight_hash_interval=args.check_weight_hash_interval,
        iterations_to_skip=tuple(sorted(set(args.iterations_to_skip))),
        deterministic_mode=args.deterministic_mode,
    )
    data = DataConfig(
        data_path=tuple(args.data_path), per_split_data_path=per_split_data_path(args),
        split=args.split, mock_data=args.mock_data,
        tokenizer_type=args.tokenizer_type, tokenizer_model=args.tokenizer_model,
        vocab_file=args.vocab_file, merge_file=args.merge_file, vocab_size=args.vocab_size,
        data_cache_path=args.data_cache_path, num_workers=args.num_workers,
        reset_position_ids=args.reset_position_ids,
        reset_attention_mask=args.reset_attention_mask, eod_mask_loss=args.eod_mask_loss,
        mmap_bin_files=args.mmap_bin_files,
        num_dataset_builder_threads=args.num_dataset_builder_threads,
    )
    checkpoint = CheckpointConfig(
        save=args.save, load=args.load, save_interval=args.save_interval,
        no_load_optim=args.no_load_optim, no_load_rng=args.no_load_rng,
        no_save_optim=args.no_save_optim, no_save_rng=args.no_save_rng,
        finetune=args.finetune, exit_interval=args.exit_interval,
        exit_duration_in_mins=args.exit_duration_in_mins,
        exit_signal=args.exit_signal if args.exit_signal_handler else None,
        fully_parallel_save=args.ckpt_fully_parallel_save,
        fully_parallel_load=args.ckpt_fully_parallel_load,
        assume_constant_structure=args.ckpt_assume_constant_structure,
        async_save=args.async_save, ckpt_step=args.ckpt_step,
        exit_on_missing_checkpoint=args.exit_on_missing_checkpoint,
        non_persistent_save_interval=args.non_persistent_save_interval,
        non_persistent_dir=non_persistent_dir, save_retain_interval=args.save_retain_interval,
        pretrained_checkpoint=args.pretrained_checkpoint,
    )
    logging_cfg = LoggingConfig(
        log_interval=args.log_interval, eval_interval=args.eval_interval,
        eval_iters=args.eval_iters, multiple_validation_sets=args.multiple_validation_sets,
        full_validation=args.full_validation, tensorboard_dir=args.tensorboard_dir,
        tensorboard_log_interval=args.tensorboard_log_interval,
        tensorboard_queue_size=args.tensorboard_queue_size,
        log_params_norm=args.log_params_norm, log_num_zeros_in_grad=args.log_num_zeros_in_grad,
        log_timers_to_tensorboard=args.log_timers_to_tensorboard,
        log_memory_to_tensorboard=args.log_memory_to_tensorboard,
        log_world_size_to_tensorboard=args.log_world_size_to_tensorboard,
        log_loss_scale_to_tensorboard=args.log_loss_scale_to_tensorboard,
        log_learning_rate_to_tensorboard=args.log_learning_rate_to_tensorboard,
        log_progress=args.log_progress,
        profile=args.profile, use_pytorch_profiler=args.use_pytorch_profiler,
        profile_step_start=args.profile_step_start, profile_step_end=args.profile_step_end,
        profile_ranks=tuple(args.profile_ranks),
        memory_snapshot_path=args.memory_snapshot_path if args.record_memory_history else None,
        wandb_project=args.wandb_project, wandb_exp_name=args.wandb_exp_name,
        wandb_save_dir=args.wandb_save_dir, wandb_entity=args.wandb_entity,
    )
    growth = growth_config_from_args(args, model, parallel, gbs, rampup)
    _check(args.pretrained_checkpoint is None or growth is None,
           "--pretrained-checkpoint does not apply to a growth run (--grow-at-tokens): give the "
           "small model's checkpoint as --load")
    _check(args.non_persistent_save_interval is None or growth is None,
           "--non-persistent-save-interval does not apply to a growth run (--grow-at-tokens), "
           "whose resume reads the phases' --save checkpoints: use --save-interval")
    _check(args.ckpt_step is None or growth is None,
           "--ckpt-step does not apply to a growth run (--grow-at-tokens), whose --load resumes "
           "where the run stopped: point --load at the checkpoint directory to start from")
    _check(not (args.skip_train and growth is not None),
           "--skip-train evaluates one model: drop --grow-at-tokens (evaluate the grown "
           "checkpoint with --load instead)")
    _check(not args.skip_train or args.eval_iters > 0,
           "--skip-train only evaluates: give --eval-iters > 0")
    if args.reset_attention_mask:
        from megastack.layer_impl import resolve_transformer_impl

        impl = resolve_transformer_impl(args.transformer_impl)
        _check(impl != "transformer_engine",
               f"--reset-attention-mask needs --transformer-impl local or fused (it resolves to "
               f"{impl}, whose causal attention ignores a per-sample mask)")
    if args.sequence_parallel:
        from megastack.layer_impl import check_sequence_parallel

        check_sequence_parallel(args.transformer_impl, parallel.tensor_model_parallel_size, True)
        if growth is not None:
            check_sequence_parallel(args.transformer_impl,
                                    growth.target_parallel.tensor_model_parallel_size, True,
                                    "--target-tensor-model-parallel-size")
    return PretrainConfig(model=model, parallel=parallel, train=train, data=data,
                          checkpoint=checkpoint, logging=logging_cfg, growth=growth)


# Flags that only growth in one run reads, by attribute.
_GROWTH_ONLY_FLAGS = {
    "stacking_list": "--stacking-list", "target_num_layers": "--target-num-layers",
    "target_tensor_model_parallel_size": "--target-tensor-model-parallel-size",
    "target_pipeline_model_parallel_size": "--target-pipeline-model-parallel-size",
    "target_num_layers_per_virtual_pipeline_stage":
        "--target-num-layers-per-virtual-pipeline-stage",
    "target_decoder_first_pipeline_num_layers": "--target-decoder-first-pipeline-num-layers",
    "target_decoder_last_pipeline_num_layers": "--target-decoder-last-pipeline-num-layers",
    "target_num_virtual_stages_per_pipeline_rank": "--target-num-virtual-stages-per-pipeline-rank",
    "lr_after_growth": "--lr-after-growth",
    "lr_warmup_iters_after_growth": "--lr-warmup-iters-after-growth",
    "target_hidden_size": "--target-hidden-size",
    "target_ffn_hidden_size": "--target-ffn-hidden-size",
    "target_num_attention_heads": "--target-num-attention-heads",
    "target_num_query_groups": "--target-num-query-groups",
    "growth_width_operator": "--growth-width-operator",
}


def growth_config_from_args(args: argparse.Namespace, model: ModelConfig,
                            parallel: ParallelConfig, global_batch_size: int,
                            rampup: Optional[RampUp] = None) -> Optional[GrowthConfig]:
    if args.grow_at_tokens is None:
        given = [flag for attr, flag in _GROWTH_ONLY_FLAGS.items()
                 if getattr(args, attr) is not None]
        _check(not given, f"{', '.join(given)} only apply to growth in one run: add "
                          f"--grow-at-tokens N (or auto), or grow a saved checkpoint with "
                          f"tools/grow_checkpoint.py")
        return None
    _check(args.stacking_list is not None, "--grow-at-tokens needs --stacking-list")
    _check(not (args.growth_operator == "learn" and args.reset_attention_mask),
           "--growth-operator learn fits its growth maps with causal attention only: drop "
           "--reset-attention-mask, or grow with another operator")
    _check(args.save is not None, "--grow-at-tokens needs --save DIR (the small model is saved "
                                  "there before growing)")
    from megastack.growth.plans import parse_stacking_list
    from megastack.growth.timing import parse_count

    plan = parse_stacking_list(args.stacking_list)
    target_layers = len(plan) if args.target_num_layers is None else args.target_num_layers
    # Checked now, not after the small phase has trained.
    plan.validate(model.num_layers, target_layers)
    if args.growth_operator == "zero":
        from megastack.growth.depth import check_zero_plan

        check_zero_plan(plan, model.num_layers, operator_flag="--growth-operator")
    from megastack.growth.grow_checkpoint import widened_model
    from megastack.growth.width import validate_width_growth, widths

    deep_model = model.replace(num_layers=target_layers)
    target_model = widened_model(deep_model, args.target_hidden_size, args.target_ffn_hidden_size,
                                 args.target_num_attention_heads, args.target_num_query_groups)
    width_operator = args.growth_width_operator or "direct"
    widens = target_model != deep_model
    _check(widens or args.growth_width_operator is None,
           f"--growth-width-operator {args.growth_width_operator} grows widths: give the "
           f"grown model's --target-hidden-size (and --target-ffn-hidden-size, ...)")
    if widens:
        validate_width_growth(deep_model, target_model, width_operator)
    _check(args.growth_mask_iters is None or args.growth_operator == "random"
           or (widens and width_operator == "random"),
           f"--growth-mask-iters fades in what G_random added: add --growth-operator random "
           f"(or --growth-width-operator random with width growth); the "
           f"{args.growth_operator} operator's new layers are not masked")
    if args.grow_at_tokens == "auto":
        grow_at = None
    else:
        try:
            grow_at = int(parse_count(args.grow_at_tokens))
        except ValueError as e:
            raise ValueError(f"--grow-at-tokens: {e}, or auto") from None
    target_parallel = ParallelConfig(
        tensor_model_parallel_size=args.target_tensor_model_parallel_size
        or parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.target_pipeline_model_parallel_size
        or parallel.pipeline_model_parallel_size,
        num_layers_per_virtual_pipeline_stage=args.target_num_layers_per_virtual_pipeline_stage,
        sequence_parallel=parallel.sequence_parallel,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
        decoder_first_pipeline_num_layers=args.target_decoder_first_pipeline_num_layers,
        decoder_last_pipeline_num_layers=args.target_decoder_last_pipeline_num_layers,
        account_for_embedding_in_pipeline_split=parallel.account_for_embedding_in_pipeline_split,
        account_for_loss_in_pipeline_split=parallel.account_for_loss_in_pipeline_split,
        num_virtual_stages_per_pipeline_rank=args.target_num_virtual_stages_per_pipeline_rank,
    )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        target_parallel.validate(target_model, world_size, flag_prefix="target-")
    except ValueError as e:
        raise ValueError(f"the grown model's layout: {e}") from None
    target_parallel = target_parallel.with_layers_per_virtual_stage(target_model.num_layers)
    target_dp = world_size // (target_parallel.tensor_model_parallel_size
                               * target_parallel.pipeline_model_parallel_size)
    mbs = args.micro_batch_size
    _check(global_batch_size % (mbs * target_dp) == 0,
           f"the grown model's layout: --global-batch-size {global_batch_size} is not divisible "
           f"by --micro-batch-size {mbs} x its data-parallel size {target_dp}: use a global "
           f"batch that is a multiple of {mbs * target_dp}")
    _check_interleaved_microbatches(target_parallel, target_model,
                                    global_batch_size // (mbs * target_dp), flag_prefix="target-")
    if rampup is not None:
        _check_rampup_layout(rampup, global_batch_size, mbs, target_dp, target_parallel,
                             target_model, layout="the grown model's ", flag_prefix="target-")
    if args.growth_operator == "learn":
        _check(world_size == 1 and target_parallel.tensor_model_parallel_size == 1
               and target_parallel.pipeline_model_parallel_size == 1,
               "--growth-operator learn trains its growth maps on one process: run it with one "
               "rank at TP 1 / PP 1 (or grow offline with tools/grow_checkpoint.py)")
        _check(args.learn_steps >= 1, f"--learn-steps must be >= 1, got {args.learn_steps}")
    return GrowthConfig(
        grow_at_tokens=grow_at, stacking_list=args.stacking_list,
        target_num_layers=target_layers, operator=args.growth_operator,
        target_parallel=target_parallel, lr_after_growth=args.lr_after_growth,
        lr_warmup_iters_after_growth=args.lr_warmup_iters_after_growth,
        learn_steps=args.learn_steps, learn_lr=args.learn_lr,
        target_widths=widths(target_model) if widens else {},
        width_operator=width_operator,
    )
