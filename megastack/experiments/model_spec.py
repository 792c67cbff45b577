"""Architectures on the command line: 'preset' or 'preset+field=value+...'."""

from __future__ import annotations

from typing import Any

from megastack.config import ModelConfig


def parse_model_spec(spec: str) -> ModelConfig:
    """'mini-8l128h' or 'mini-8l128h+hidden_size=64+ffn_hidden_size=176' -> ModelConfig."""
    name, *overrides = spec.split("+")
    fields = ModelConfig.__dataclass_fields__
    changes: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"model override {item!r} in {spec!r} must be field=value with a "
                             f"ModelConfig field ({', '.join(sorted(fields))})")
        changes[key] = int(value) if value.lstrip("-").isdigit() else value
    return ModelConfig.from_name(name, **changes)
