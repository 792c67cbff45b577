"""Why a flag on the command line is not one of megastack's: a whole family of Megatron-LM
features megastack does not build (mixture of experts, FP8, RL, ...), or a likely typo.

Megatron-LM scripts carry many flags; argparse's bare "unrecognized arguments" leaves the user
to guess whether megastack spells the flag differently or lacks the feature.
"""

import difflib
from typing import Iterable

_MOE = "mixture-of-experts layers are not implemented (megastack trains dense GPT models)"
_CP = "context parallelism is not implemented (--context-parallel-size stays 1)"
_FSDP = ("FSDP is not implemented: use --use-distributed-optimizer (ZeRO-1) with tensor and "
         "pipeline parallelism")
_MLA = "multi-latent attention is not among megastack's architectures"

# (flag prefix, why): Megatron-LM's feature families that megastack does not have.
FAMILIES = (
    ("--moe-", _MOE), ("--expert-", _MOE), ("--num-experts", _MOE),
    ("--mtp-", "multi-token prediction is not implemented"),
    ("--fp8", "FP8 training is not implemented: use --bf16"),
    ("--fp4", "FP4 training is not implemented: use --bf16"),
    ("--te-", "Transformer Engine's options beyond --transformer-impl are not wired"),
    ("--tp-comm-", "Transformer Engine's userbuffer overlap of tensor-parallel communication is "
                   "not wired"),
    ("--disable-tp-comm-", "Transformer Engine's userbuffer overlap of tensor-parallel "
                           "communication is not wired"),
    ("--cp-comm-", _CP), ("--hierarchical-context-parallel", _CP),
    ("--fsdp-", _FSDP), ("--torch-fsdp2", _FSDP), ("--megatron-fsdp", _FSDP),
    ("--data-parallel-sharding-strategy", _FSDP),
    ("--q-lora-rank", _MLA), ("--kv-lora-rank", _MLA), ("--multi-latent-attention", _MLA),
    ("--qk-head-dim", _MLA), ("--qk-pos-emb-head-dim", _MLA), ("--v-head-dim", _MLA),
    ("--muon-", "the Muon optimizer is not implemented: use --optimizer adam or sgd"),
    ("--inference-", "megastack pre-trains; serve the checkpoint with Megatron-LM's inference"),
    ("--retro-", "RETRO models are not implemented"),
    ("--rl-", "reinforcement learning is not part of megastack's pre-training"),
    ("--langrl-", "reinforcement learning is not part of megastack's pre-training"),
    ("--grpo-", "reinforcement learning is not part of megastack's pre-training"),
    ("--kitchen-", "NVIDIA Kitchen quantization is not implemented"),
    ("--heterogeneous-", "heterogeneous layer configurations are not implemented"),
    ("--inprocess-", "in-process restart is not implemented: resume from checkpoints"),
    ("--enable-ft-package", "the fault-tolerance package is not wired: resume from checkpoints"),
    ("--straggler-", "straggler detection is not implemented"),
    ("--vision-", "vision models are not implemented"),
    ("--img-", "vision models are not implemented"),
    ("--bert-", "BERT models are not implemented"),
    ("--biencoder-", "biencoder models are not implemented"),
    ("--sft", "supervised fine-tuning datasets are not implemented"),
    ("--yarn-", "YaRN RoPE scaling is not among megastack's architectures"),
    ("--window-", "sliding-window attention is not among megastack's architectures"),
    ("--s3-cache-path", "megastack reads datasets from a filesystem path"),
    ("--object-storage-cache-path", "megastack reads datasets from a filesystem path"),
)


def explain(unknown: Iterable[str], known_flags: Iterable[str]) -> str:
    """One line per unrecognised command-line word that looks like a flag (values after it are
    left out): the Megatron-LM family it belongs to, or the nearest megastack flags."""
    known = sorted(set(known_flags))
    lines = []
    for word in unknown:
        if not word.startswith("--"):
            continue
        flag = word.split("=", 1)[0]
        why = next((why for prefix, why in FAMILIES if flag.startswith(prefix)), None)
        if why is not None:
            lines.append(f"{flag}: a Megatron-LM flag megastack does not take: {why}")
            continue
        near = difflib.get_close_matches(flag, known, n=3, cutoff=0.75)
        hint = f"did you mean {' or '.join(near)}?" if near else (
            "not a megastack flag (python -m megastack.pretrain --help lists them)")
        lines.append(f"{flag}: {hint}")
    return "\n".join(lines)
