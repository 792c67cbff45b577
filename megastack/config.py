"""Model architecture: one dataclass, named presets as data, and the mapping to megatron-core.

The architecture holds no parallelism: the same `ModelConfig` describes a model whether it is
trained on one CPU or on 64 nodes. `to_transformer_config` adds the parallel layout.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Optional

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelConfig:
    """A Llama-style decoder-only transformer (RMSNorm, SwiGLU, RoPE, GQA, untied, no biases)."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    ffn_hidden_size: Optional[int] = None  # None: Llama's 8/3*h rounded up to a multiple of 256
    num_query_groups: Optional[int] = None  # None: multi-head attention (groups == heads)
    # Width of each attention head (--kv-channels); None: hidden_size / num_attention_heads.
    # Given, queries are num_attention_heads * kv_channels wide (Qwen3's head_dim).
    kv_channels: Optional[int] = None
    vocab_size: int = 32000
    seq_length: int = 2048
    max_position_embeddings: Optional[int] = None  # None: seq_length
    normalization: str = "RMSNorm"
    norm_epsilon: float = 1e-5
    swiglu: bool = True
    add_bias_linear: bool = False
    # Biases in the QKV projection only (Qwen2's); add_bias_linear gives them anyway.
    add_qkv_bias: bool = False
    # Each head's queries and keys normalised (over head_dim, before RoPE) with --normalization
    # (Qwen3's q/k norm).
    qk_layernorm: bool = False
    position_embedding_type: str = "rope"
    rotary_base: int = 10000
    # Llama 3.x's RoPE frequency scaling (megatron-core's: low/high frequency factors 1 and 4
    # over an original context of 8192).
    rope_scaling: bool = False
    rope_scaling_factor: float = 8.0
    untie_embeddings_and_output_weights: bool = True
    init_method_std: float = 0.02
    embedding_init_method_std: Optional[float] = None  # None: init_method_std
    # Training-time regularisation, not shape: kept here because megatron-core's
    # TransformerConfig takes it with the architecture. Llama-style presets train without.
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.ffn_hidden_size is None:
            object.__setattr__(self, "ffn_hidden_size", llama_ffn_hidden_size(self.hidden_size))
        if self.num_query_groups is None:
            object.__setattr__(self, "num_query_groups", self.num_attention_heads)
        if self.max_position_embeddings is None:
            object.__setattr__(self, "max_position_embeddings", self.seq_length)
        if (self.kv_channels is not None and self.num_attention_heads > 0
                and self.kv_channels * self.num_attention_heads == self.hidden_size):
            # The default said explicitly: one spelling per architecture, so that records
            # compare equal and width growth scales heads with the hidden size as usual.
            object.__setattr__(self, "kv_channels", None)
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        for flag, value in (("--num-layers", self.num_layers), ("--hidden-size", self.hidden_size),
                            ("--ffn-hidden-size", self.ffn_hidden_size),
                            ("--num-attention-heads", self.num_attention_heads),
                            ("--num-query-groups", self.num_query_groups),
                            ("--vocab-size", self.vocab_size), ("--seq-length", self.seq_length)):
            need(value >= 1, f"{flag} must be >= 1, got {value}")
        need(self.kv_channels is None or self.kv_channels >= 1,
             f"--kv-channels must be >= 1, got {self.kv_channels}")
        need(
            self.kv_channels is not None or self.hidden_size % self.num_attention_heads == 0,
            f"--hidden-size {self.hidden_size} is not divisible by --num-attention-heads "
            f"{self.num_attention_heads}: pick a hidden size that is a multiple of the head count "
            f"(or give the head width with --kv-channels)",
        )
        need(
            self.num_attention_heads % self.num_query_groups == 0,
            f"--num-attention-heads {self.num_attention_heads} is not divisible by "
            f"--num-query-groups {self.num_query_groups}: each query group must hold whole heads",
        )
        need(
            self.normalization in ("RMSNorm", "LayerNorm"),
            f"--normalization must be RMSNorm or LayerNorm, got {self.normalization!r}",
        )
        need(
            self.position_embedding_type in ("rope", "learned_absolute", "none"),
            f"--position-embedding-type must be rope, learned_absolute or none, "
            f"got {self.position_embedding_type!r}",
        )
        for flag, p in (("--attention-dropout", self.attention_dropout),
                        ("--hidden-dropout", self.hidden_dropout)):
            need(0.0 <= p < 1.0, f"{flag} must be in [0, 1), got {p}")
        need(self.init_method_std > 0, f"--init-method-std must be > 0, got {self.init_method_std}")
        need(self.embedding_init_method_std is None or self.embedding_init_method_std > 0,
             f"--embedding-init-method-std must be > 0, got {self.embedding_init_method_std}")
        need(not self.rope_scaling or self.position_embedding_type == "rope",
             f"--use-rope-scaling scales RoPE frequencies: it needs --position-embedding-type "
             f"rope, not {self.position_embedding_type}")
        need(self.rope_scaling_factor > 0,
             f"--rope-scaling-factor must be > 0, got {self.rope_scaling_factor}")
        need(self.norm_epsilon > 0, f"--norm-epsilon must be > 0, got {self.norm_epsilon}")
        need(
            self.max_position_embeddings >= self.seq_length,
            f"--max-position-embeddings {self.max_position_embeddings} is smaller than "
            f"--seq-length {self.seq_length}",
        )

    @property
    def head_dim(self) -> int:
        """Width of one attention head (megatron-core's kv_channels)."""
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    @property
    def query_size(self) -> int:
        """Width of all query heads together: the attention output the projection reads."""
        return self.num_attention_heads * self.head_dim

    @property
    def qkv_bias(self) -> bool:
        """Whether the QKV projection has a bias (megatron-core: add_bias_linear or add_qkv_bias)."""
        return self.add_bias_linear or self.add_qkv_bias

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def weight_differences(self, other: "ModelConfig") -> list[str]:
        """How `other` differs from this config in what shapes the weights, one
        "--flag: this value, other value" per flag; empty when a checkpoint of one loads into
        the other. Sequence length, RoPE base, epsilon and init are free to change."""
        fields = [("--num-layers", "num_layers"), ("--hidden-size", "hidden_size"),
                  ("--ffn-hidden-size", "ffn_hidden_size"),
                  ("--num-attention-heads", "num_attention_heads"),
                  ("--kv-channels (head width)", "head_dim"),
                  ("--num-query-groups", "num_query_groups"),
                  ("padded vocabulary (--vocab-size or the tokenizer)", "vocab_size"),
                  ("--normalization", "normalization"), ("--swiglu", "swiglu"),
                  ("--disable-bias-linear (add_bias_linear)", "add_bias_linear"),
                  ("--add-qkv-bias (a QKV bias)", "qkv_bias"),
                  ("--qk-layernorm", "qk_layernorm"),
                  ("--position-embedding-type", "position_embedding_type"),
                  ("--untie-embeddings-and-output-weights", "untie_embeddings_and_output_weights")]
        if self.position_embedding_type == other.position_embedding_type == "learned_absolute":
            fields.append(("--max-position-embeddings", "max_position_embeddings"))
        return [f"{flag}: {getattr(self, name)!r} vs {getattr(other, name)!r}"
                for flag, name in fields if getattr(self, name) != getattr(other, name)]

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "ModelConfig":
        if name not in PRESETS:
            raise ValueError(
                f"--model {name!r} is not a known preset; choose one of: {', '.join(sorted(PRESETS))}"
            )
        return cls(**{**PRESETS[name], **overrides})

    # ---- sizes -------------------------------------------------------------------------------
    def num_parameters(self, include_embeddings: bool = True) -> int:
        """Exact parameter count of the megatron-core GPTModel this config builds."""
        h, f, q = self.hidden_size, self.ffn_hidden_size, self.query_size
        kv = self.num_query_groups * self.head_dim
        attn = h * (q + 2 * kv) + q * h  # qkv + output projection
        mlp = h * (2 * f if self.swiglu else f) + f * h
        norms = 2 * h if self.normalization == "RMSNorm" else 4 * h
        if self.qk_layernorm:  # one norm for all query heads, one for all key heads
            norms += 2 * self.head_dim * (1 if self.normalization == "RMSNorm" else 2)
        if self.qkv_bias:
            attn += q + 2 * kv
        if self.add_bias_linear:
            attn += h
            mlp += (2 * f if self.swiglu else f) + h
        layers = self.num_layers * (attn + mlp + norms)
        final_norm = h if self.normalization == "RMSNorm" else 2 * h
        total = layers + final_norm
        if include_embeddings:
            emb = self.vocab_size * h
            total += emb * (2 if self.untie_embeddings_and_output_weights else 1)
            if self.position_embedding_type == "learned_absolute":
                total += self.max_position_embeddings * h
        return total

    def flops_per_token(self, seq_length: Optional[int] = None) -> float:
        """Training FLOPs per token (forward + backward) as Megatron-LM's
        num_floating_point_operations counted them before it halved the attention-score term
        for the causal mask (its later count is 6-11% lower for the presets here). Every
        FLOPs budget and speedup in this repository uses this one count."""
        s = seq_length or self.seq_length
        h, f, L, q = self.hidden_size, self.ffn_hidden_size, self.num_layers, self.query_size
        kv = self.num_query_groups * self.head_dim
        mlp_mult = 3 if self.swiglu else 2
        per_layer = 2 * h * (q + 2 * kv) + 2 * q * h + 2 * s * q * 2 + 2 * mlp_mult * h * f
        return 3.0 * (L * per_layer + 2 * h * self.vocab_size)


def llama_ffn_hidden_size(hidden_size: int, multiple_of: int = 256) -> int:
    f = int(2 * (4 * hidden_size) / 3)
    return multiple_of * ((f + multiple_of - 1) // multiple_of)


# Presets are data: a name -> ModelConfig keyword arguments. The `tiny-*` presets keep CI fast.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny-2l": dict(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                    ffn_hidden_size=176, vocab_size=512, seq_length=64),
    "tiny-4l": dict(num_layers=4, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                    ffn_hidden_size=176, vocab_size=512, seq_length=64),
    "tiny-8l": dict(num_layers=8, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                    ffn_hidden_size=176, vocab_size=512, seq_length=64),
    # Quickstart / miniature-experiment sizes (about 4k-token SentencePiece vocabulary).
    "mini-2l128h": dict(num_layers=2, hidden_size=128, num_attention_heads=4,
                        ffn_hidden_size=352, vocab_size=4096, seq_length=256),
    "mini-8l128h": dict(num_layers=8, hidden_size=128, num_attention_heads=4,
                        ffn_hidden_size=352, vocab_size=4096, seq_length=256),
    # The paper's settings (Du et al. 2024): 6L2048H grown to 24L2048H, 1B class.
    "6L2048H": dict(num_layers=6, hidden_size=2048, num_attention_heads=16,
                    ffn_hidden_size=5632, vocab_size=32000, seq_length=2048),
    "24L2048H": dict(num_layers=24, hidden_size=2048, num_attention_heads=16,
                     ffn_hidden_size=5632, vocab_size=32000, seq_length=2048),
    "6L1024H": dict(num_layers=6, hidden_size=1024, num_attention_heads=16,
                    ffn_hidden_size=2816, vocab_size=32000, seq_length=2048),
    "24L1024H": dict(num_layers=24, hidden_size=1024, num_attention_heads=16,
                     ffn_hidden_size=2816, vocab_size=32000, seq_length=2048),
    "8L4096H": dict(num_layers=8, hidden_size=4096, num_attention_heads=32,
                    ffn_hidden_size=11008, vocab_size=32000, seq_length=4096),
    "llama2-7b": dict(num_layers=32, hidden_size=4096, num_attention_heads=32,
                      ffn_hidden_size=11008, vocab_size=32000, seq_length=4096),
    "llama2-13b": dict(num_layers=40, hidden_size=5120, num_attention_heads=40,
                       ffn_hidden_size=13824, vocab_size=32000, seq_length=4096),
    "llama3-8b": dict(num_layers=32, hidden_size=4096, num_attention_heads=32,
                      num_query_groups=8, ffn_hidden_size=14336, vocab_size=128256,
                      seq_length=8192, rotary_base=500000),
}


# ParallelConfig's fields that split the layers over pipeline stages unevenly (Megatron-LM's
# flag names), which a grown model does not inherit: its layer count is another.
PIPELINE_SPLIT_FIELDS = ("decoder_first_pipeline_num_layers", "decoder_last_pipeline_num_layers",
                         "account_for_embedding_in_pipeline_split",
                         "account_for_loss_in_pipeline_split",
                         "num_virtual_stages_per_pipeline_rank")


@dataclass(frozen=True)
class ParallelConfig:
    """How the model is laid out over ranks. Sizes use Megatron's flag names."""

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    num_layers_per_virtual_pipeline_stage: Optional[int] = None
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = False
    # Uneven pipeline stages, as megatron-core splits them: the first and/or last stage hold
    # the given number of layers and the middle stages share the rest evenly; or the embedding
    # and/or the loss count as one layer each in an even split. Interleaved, each stage's
    # layers are cut into num_virtual_stages_per_pipeline_rank equal chunks (Megatron-LM's
    # other spelling of interleaving, the one it asks for with uneven stages; the trainer turns
    # it into layers per virtual stage for even ones, which growth carries over).
    decoder_first_pipeline_num_layers: Optional[int] = None
    decoder_last_pipeline_num_layers: Optional[int] = None
    account_for_embedding_in_pipeline_split: bool = False
    account_for_loss_in_pipeline_split: bool = False
    num_virtual_stages_per_pipeline_rank: Optional[int] = None

    @property
    def uneven_pipeline(self) -> bool:
        return (self.decoder_first_pipeline_num_layers is not None
                or self.decoder_last_pipeline_num_layers is not None
                or self.account_for_embedding_in_pipeline_split
                or self.account_for_loss_in_pipeline_split)

    def stage_num_layers(self, num_layers: int) -> tuple[int, ...]:
        """Transformer layers per pipeline stage, first to last."""
        pp = self.pipeline_model_parallel_size
        first, last = self.decoder_first_pipeline_num_layers, self.decoder_last_pipeline_num_layers
        if first is not None or last is not None:
            middle_stages = pp - (first is not None) - (last is not None)
            middle = num_layers - (first or 0) - (last or 0)
            stages = [middle // middle_stages if middle_stages else 0] * pp
            if first is not None:
                stages[0] = first
            if last is not None:
                stages[-1] = last
            return tuple(stages)
        embedding = int(self.account_for_embedding_in_pipeline_split)
        loss = int(self.account_for_loss_in_pipeline_split)
        stages = [(num_layers + embedding + loss) // pp] * pp
        stages[0] -= embedding
        stages[-1] -= loss
        return tuple(stages)

    def chunk_num_layers(self, num_layers: int) -> tuple[tuple[int, ...], ...]:
        """Transformer layers per model chunk of each pipeline stage, [stage][chunk]
        (megatron-core's get_num_layers_to_build, for a layout that passed `validate`)."""
        chunks = self.virtual_pipeline_size(num_layers) or 1
        stages = self.stage_num_layers(num_layers)
        if self.decoder_first_pipeline_num_layers is not None or \
                self.decoder_last_pipeline_num_layers is not None:
            return tuple((n // chunks,) * chunks for n in stages)
        # Even, or the embedding / loss counted as a layer of the very first / last chunk.
        embedding = int(self.account_for_embedding_in_pipeline_split)
        loss = int(self.account_for_loss_in_pipeline_split)
        per_chunk = (num_layers + embedding + loss) // len(stages) // chunks
        sizes = [[per_chunk] * chunks for _ in stages]
        sizes[0][0] -= embedding
        sizes[-1][-1] -= loss
        return tuple(map(tuple, sizes))

    def with_layers_per_virtual_stage(self, num_layers: int) -> "ParallelConfig":
        """An even split's interleaving given as chunks per rank, as layers per chunk (what
        growth carries over to the grown model); uneven stages keep their chunk count. For a
        layout that passed `validate`."""
        chunks = self.num_virtual_stages_per_pipeline_rank
        if chunks is None or self.uneven_pipeline:
            return self
        return dataclasses.replace(
            self, num_virtual_stages_per_pipeline_rank=None,
            num_layers_per_virtual_pipeline_stage=num_layers
            // (self.pipeline_model_parallel_size * chunks))

    def virtual_pipeline_size(self, num_layers: int) -> Optional[int]:
        """Model chunks per pipeline stage, or None without interleaving (as in Megatron-LM, a
        virtual stage that holds a whole pipeline stage is no interleaving)."""
        chunks = self.num_virtual_stages_per_pipeline_rank
        if chunks is not None:
            return chunks if chunks > 1 else None
        if self.num_layers_per_virtual_pipeline_stage is None:
            return None
        per_stage = num_layers // self.pipeline_model_parallel_size
        chunks = per_stage // self.num_layers_per_virtual_pipeline_stage
        return chunks if chunks > 1 else None

    def validate(self, model: ModelConfig, world_size: Optional[int] = None,
                 flag_prefix: str = "") -> None:
        """Raise ValueError naming the flag when the layout cannot hold the model. The layout
        and depth flags are named with `flag_prefix` (e.g. "target-" for a grown model)."""
        tp, pp = self.tensor_model_parallel_size, self.pipeline_model_parallel_size
        tp_flag = f"--{flag_prefix}tensor-model-parallel-size"
        pp_flag = f"--{flag_prefix}pipeline-model-parallel-size"
        vpp_flag = f"--{flag_prefix}num-layers-per-virtual-pipeline-stage"
        layers_flag = f"--{flag_prefix}num-layers"
        if tp < 1 or pp < 1:
            raise ValueError(f"{tp_flag} and {pp_flag} must be >= 1")
        if world_size is not None and world_size % (tp * pp) != 0:
            raise ValueError(
                f"world size {world_size} is not divisible by {tp_flag} {tp} x "
                f"{pp_flag} {pp}: launch a multiple of {tp * pp} processes"
            )
        if model.num_attention_heads % tp != 0:
            raise ValueError(
                f"--num-attention-heads {model.num_attention_heads} is not divisible by "
                f"{tp_flag} {tp}: use a TP size that divides the head count"
            )
        if model.num_query_groups % tp != 0:
            raise ValueError(
                f"--num-query-groups {model.num_query_groups} is not divisible by "
                f"{tp_flag} {tp}: use a TP size that divides the query groups"
            )
        if model.ffn_hidden_size % tp != 0:
            raise ValueError(
                f"--ffn-hidden-size {model.ffn_hidden_size} is not divisible by "
                f"{tp_flag} {tp}"
            )
        if self.uneven_pipeline:
            self._validate_uneven_stages(model.num_layers, flag_prefix)
        elif model.num_layers % pp != 0:
            raise ValueError(
                f"{layers_flag} {model.num_layers} is not divisible by "
                f"{pp_flag} {pp}: choose a pipeline size that divides the "
                f"layer count (e.g. {', '.join(str(d) for d in _divisors(model.num_layers))}), "
                f"or give the first or last stage its own count with "
                f"--{flag_prefix}decoder-first-pipeline-num-layers / "
                f"--{flag_prefix}decoder-last-pipeline-num-layers"
            )
        v = self.num_layers_per_virtual_pipeline_stage
        chunks = self.num_virtual_stages_per_pipeline_rank
        chunks_flag = f"--{flag_prefix}num-virtual-stages-per-pipeline-rank"
        if v is not None and chunks is not None:
            raise ValueError(f"give {chunks_flag} or {vpp_flag}, not both")
        if chunks is not None and not self.uneven_pipeline and (
                chunks < 1 or model.num_layers % (pp * chunks) != 0):
            raise ValueError(f"{chunks_flag} {chunks}: {layers_flag} {model.num_layers} must "
                             f"split into {chunks} chunks on each of the {pp} pipeline ranks "
                             f"({pp * chunks} equal chunks)")
        if chunks is not None and chunks > 1 and pp < 2:
            raise ValueError(f"{chunks_flag} needs {pp_flag} >= 2")
        if v is not None:
            if pp < 2:
                raise ValueError(f"{vpp_flag} needs {pp_flag} >= 2")
            per_stage = model.num_layers // pp
            if v < 1 or per_stage % v != 0:
                raise ValueError(
                    f"{vpp_flag} {v} does not divide the "
                    f"{per_stage} layers of each pipeline stage"
                )
        if self.sequence_parallel and tp == 1:
            # Megatron silently ignores it; say so instead of pretending it is on.
            logger.warning("--sequence-parallel has no effect with --tensor-model-parallel-size 1")

    def _validate_uneven_stages(self, num_layers: int, flag_prefix: str) -> None:
        pp = self.pipeline_model_parallel_size
        first_flag = f"--{flag_prefix}decoder-first-pipeline-num-layers"
        last_flag = f"--{flag_prefix}decoder-last-pipeline-num-layers"
        pp_flag = f"--{flag_prefix}pipeline-model-parallel-size"
        given = [flag for flag, on in (
            (first_flag, self.decoder_first_pipeline_num_layers is not None),
            (last_flag, self.decoder_last_pipeline_num_layers is not None),
            ("--account-for-embedding-in-pipeline-split",
             self.account_for_embedding_in_pipeline_split),
            ("--account-for-loss-in-pipeline-split", self.account_for_loss_in_pipeline_split),
        ) if on]
        if pp < 2:
            raise ValueError(f"{', '.join(given)} split the layers over pipeline stages: "
                             f"they need {pp_flag} >= 2")
        if self.num_layers_per_virtual_pipeline_stage is not None:
            raise ValueError(f"{', '.join(given)}: interleave uneven stages with "
                             f"--{flag_prefix}num-virtual-stages-per-pipeline-rank (model chunks "
                             f"per stage, as Megatron-LM asks), not "
                             f"--{flag_prefix}num-layers-per-virtual-pipeline-stage")
        chunks = self.num_virtual_stages_per_pipeline_rank
        chunks_flag = f"--{flag_prefix}num-virtual-stages-per-pipeline-rank"
        if chunks is not None and chunks < 1:
            raise ValueError(f"{chunks_flag} must be >= 1, got {chunks}")
        counts_given = self.decoder_first_pipeline_num_layers is not None or \
            self.decoder_last_pipeline_num_layers is not None
        if counts_given:
            self._validate_first_last(num_layers, flag_prefix, given)
            # what each stage splits into chunks
            stage_slots = self.stage_num_layers(num_layers)
        else:
            counted = num_layers + self.account_for_embedding_in_pipeline_split \
                + self.account_for_loss_in_pipeline_split
            # The stage that counts the embedding or loss must keep a transformer layer.
            if counted % pp != 0 or counted // pp < 2:
                raise ValueError(
                    f"{' and '.join(given)}: {num_layers} layers + the embedding/loss counted "
                    f"as layers = {counted} must split evenly over {pp_flag} {pp} with at least "
                    f"one transformer layer per stage")
            stage_slots = (counted // pp,) * pp  # the embedding/loss fill a chunk's slot
        if chunks is not None and chunks > 1 and (
                any(n % chunks for n in stage_slots)
                or min(map(min, self.chunk_num_layers(num_layers))) < 1):
            raise ValueError(
                f"{chunks_flag} {chunks}: the pipeline stages' layers "
                f"({'/'.join(map(str, self.stage_num_layers(num_layers)))}, from "
                f"{', '.join(given)}) must split into {chunks} equal chunks of at least one "
                f"layer each" + ("" if counts_given else
                                 " (the embedding and loss count as a layer)"))

    def _validate_first_last(self, num_layers: int, flag_prefix: str, given: list[str]) -> None:
        pp = self.pipeline_model_parallel_size
        first_flag = f"--{flag_prefix}decoder-first-pipeline-num-layers"
        last_flag = f"--{flag_prefix}decoder-last-pipeline-num-layers"
        pp_flag = f"--{flag_prefix}pipeline-model-parallel-size"
        first, last = self.decoder_first_pipeline_num_layers, self.decoder_last_pipeline_num_layers
        if self.account_for_embedding_in_pipeline_split or self.account_for_loss_in_pipeline_split:
            raise ValueError(f"{', '.join(given)}: the first/last stage's layer counts and "
                             f"--account-for-*-in-pipeline-split are two ways to say the same "
                             f"thing; keep one")
        for flag, count in ((first_flag, first), (last_flag, last)):
            if count is not None and not 1 <= count < num_layers:
                raise ValueError(f"{flag} {count} must be between 1 and the "
                                 f"{num_layers - 1} layers the other stages leave")
        middle_stages = pp - (first is not None) - (last is not None)
        middle = num_layers - (first or 0) - (last or 0)
        if middle_stages == 0 and middle != 0 or middle_stages > 0 and (
                middle <= 0 or middle % middle_stages != 0):
            stated = " + ".join(f"{flag} {n}" for flag, n in
                                ((first_flag, first), (last_flag, last)) if n is not None)
            raise ValueError(
                f"{stated} leave {middle} of the {num_layers} layers for the "
                f"{middle_stages} other pipeline stage(s) of {pp_flag} {pp}: they must "
                f"split evenly (at least one layer each)")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def to_transformer_config(
    model: ModelConfig,
    parallel: ParallelConfig = ParallelConfig(),
    *,
    bf16: bool = False,
    fp16: bool = False,
    use_cpu_initialization: bool = False,
    recompute_granularity: Optional[str] = None,
    recompute_method: Optional[str] = None,
    recompute_num_layers: Optional[int] = None,
    **extra: Any,
):
    """Build megatron-core's TransformerConfig for this architecture and layout."""
    import torch
    from megatron.core.transformer import TransformerConfig

    assert not (bf16 and fp16)
    tp = parallel.tensor_model_parallel_size
    dtype = torch.bfloat16 if bf16 else torch.float16 if fp16 else torch.float32
    return TransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        kv_channels=model.head_dim,
        normalization=model.normalization,
        layernorm_epsilon=model.norm_epsilon,
        gated_linear_unit=model.swiglu,
        activation_func=torch.nn.functional.silu if model.swiglu else torch.nn.functional.gelu,
        bias_activation_fusion=False,
        add_bias_linear=model.add_bias_linear,
        add_qkv_bias=model.add_qkv_bias,
        qk_layernorm=model.qk_layernorm,
        init_method_std=model.init_method_std,
        embedding_init_method_std=model.embedding_init_method_std,
        hidden_dropout=model.hidden_dropout,
        attention_dropout=model.attention_dropout,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_size(model.num_layers),
        num_layers_in_first_pipeline_stage=parallel.decoder_first_pipeline_num_layers,
        num_layers_in_last_pipeline_stage=parallel.decoder_last_pipeline_num_layers,
        account_for_embedding_in_pipeline_split=parallel.account_for_embedding_in_pipeline_split,
        account_for_loss_in_pipeline_split=parallel.account_for_loss_in_pipeline_split,
        sequence_parallel=parallel.sequence_parallel and tp > 1,
        bf16=bf16,
        fp16=fp16,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        use_cpu_initialization=use_cpu_initialization,
        recompute_granularity=recompute_granularity,
        recompute_method=recompute_method,
        recompute_num_layers=recompute_num_layers,
        persist_layer_norm=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        **extra,
    )
