"""Dry-run planning: validate a parallel layout, map layers to pipeline stages, estimate memory.

Needs no GPU and no torch.distributed; `tools/plan.py` is the command-line front end.
"""

from .activations import LayerActivationTerms, layer_activation_bytes, layer_activation_terms
from .layout import PhaseLayout, validate_layout
from .memory import GIB, PhaseMemory, StageMemory, estimate_memory, in_flight_chunk_microbatches
from .parameters import StageParameters, layer_parameters, stage_parameter_counts, total_parameters
from .plan import H100_MEMORY_BYTES, GrowthPlan, PhasePlan, plan_growth, plan_phase
from .report import format_growth, format_phase, format_stage_map
from .stage_map import ChunkPlacement, layout_placements, stage_of_layer

__all__ = [
    "ChunkPlacement", "GIB", "GrowthPlan", "H100_MEMORY_BYTES", "LayerActivationTerms", "PhaseLayout",
    "PhaseMemory", "PhasePlan", "StageMemory", "StageParameters", "estimate_memory",
    "format_growth", "format_phase", "format_stage_map", "in_flight_chunk_microbatches",
    "layer_activation_bytes", "layer_activation_terms", "layer_parameters", "layout_placements",
    "plan_growth", "plan_phase", "stage_of_layer", "stage_parameter_counts", "total_parameters", "validate_layout",
]
