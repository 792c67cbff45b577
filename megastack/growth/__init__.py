"""Model growth: plans (which source layer goes where), operators as per-tensor functions on
global checkpoint tensors, G_learn's learned maps, and the growth-timing guideline.

Names are imported lazily so that torch-free parts (plans, timing, tools/growth_timing.py)
start without importing torch or megatron-core.
"""

from importlib import import_module

_EXPORTS = {
    "megastack.growth.plans": (
        "StackingPlan", "gstack_plan", "interleave_plan", "parse_stacking_list", "shrink_plan",
    ),
    "megastack.growth.timing": (
        "GROWTH_FACTOR", "GrowthTiming", "growth_timing", "growth_tokens", "growth_warnings",
        "parse_count",
    ),
    "megastack.growth.depth": (
        "DEPTH_OPERATORS", "DepthGrowth", "is_layer_key", "repeated_positions", "source_layer_map",
    ),
    "megastack.growth.width": ("WIDTH_OPERATORS", "AxisMap", "WidthGrowth", "validate_width_growth"),
    "megastack.growth.learn": ("LearnedGrowth", "train_learned_growth"),
    "megastack.growth.state": ("load_global_state", "model_global_state", "parameter_sources"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'megastack.growth' has no attribute {name!r}")
    value = getattr(import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
