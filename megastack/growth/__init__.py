"""Model growth: plans (which source layer goes where), operators as per-tensor functions on
global checkpoint tensors, G_learn's learned maps, and the growth-timing guideline."""

from megastack.growth.depth import (
    DEPTH_OPERATORS,
    DepthGrowth,
    is_layer_key,
    repeated_positions,
    source_layer_map,
)
from megastack.growth.learn import LearnedGrowth, train_learned_growth
from megastack.growth.plans import (
    StackingPlan,
    gstack_plan,
    interleave_plan,
    parse_stacking_list,
    shrink_plan,
)
from megastack.growth.state import load_global_state, model_global_state, parameter_sources
from megastack.growth.timing import (
    GROWTH_FACTOR,
    GrowthTiming,
    growth_timing,
    growth_tokens,
    growth_warnings,
    parse_count,
)
from megastack.growth.width import WIDTH_OPERATORS, AxisMap, WidthGrowth, validate_width_growth

__all__ = [
    "DEPTH_OPERATORS", "DepthGrowth", "is_layer_key", "repeated_positions", "source_layer_map",
    "LearnedGrowth", "train_learned_growth",
    "StackingPlan", "gstack_plan", "interleave_plan", "parse_stacking_list", "shrink_plan",
    "load_global_state", "model_global_state", "parameter_sources",
    "GROWTH_FACTOR", "GrowthTiming", "growth_timing", "growth_tokens", "growth_warnings", "parse_count",
    "WIDTH_OPERATORS", "AxisMap", "WidthGrowth", "validate_width_growth",
]
