"""Growth plans: which source layer fills each target layer (`--stacking-list`).

Accepted forms (whitespace is ignored everywhere):

- explicit 0-based list: ``0,1,2,3,4,5,0,1`` (optionally in brackets: ``[0, 1, 2]``);
- compact 0-based: ``a-b`` is the inclusive ascending range, ``X*k`` repeats X k times and
  parentheses group, e.g. ``0-5*4`` and ``0,1,(2-5)*5,4,5``;
- the paper's partial-stacking strings, 1-based, behind the ``paper:`` prefix:
  ``paper:12-3456*5-56`` is groups ``12``, ``3456`` five times, ``56`` of 1-based single-digit
  layers, i.e. ``[0,1] + [2,3,4,5]*5 + [4,5]``. The prefix keeps them apart from 0-based ranges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PAPER_PREFIX = "paper:"
# A plan longer than this is a typo (e.g. `0-99999*1000`), not a model; refuse before allocating.
MAX_PLAN_LENGTH = 1_000_000


@dataclass(frozen=True)
class StackingPlan:
    """Target layer i is a copy of source layer ``layers[i]`` (0-based)."""

    layers: tuple[int, ...]

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        object.__setattr__(self, "layers", layers)
        if not layers:
            raise ValueError("a stacking plan needs at least one layer")
        for i in layers:
            if isinstance(i, bool) or not isinstance(i, int) or i < 0:
                raise ValueError(f"stacking plan entries must be non-negative ints, got {i!r} in {list(layers)}")

    @classmethod
    def parse(cls, text: str) -> "StackingPlan":
        return parse_stacking_list(text)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def num_target_layers(self) -> int:
        return len(self.layers)

    def validate(self, source_layers: int, target_layers: int) -> None:
        """Raise ValueError (showing the parsed list) unless the plan fits both models."""
        bad = sorted({i for i in self.layers if i >= source_layers})
        if bad:
            raise ValueError(
                f"--stacking-list refers to source layer(s) {bad} but the source model has "
                f"{source_layers} layers (valid: 0-{source_layers - 1}); parsed list: {list(self.layers)}"
            )
        if len(self.layers) != target_layers:
            raise ValueError(
                f"--stacking-list has {len(self.layers)} entries but the target model has "
                f"{target_layers} layers; parsed list: {list(self.layers)}"
            )

    def to_compact(self) -> str:
        """A short 0-based form; ``parse_stacking_list(p.to_compact()) == p``."""
        return _compact(list(self.layers))

    def to_paper(self) -> str:
        """The paper's 1-based form with the ``paper:`` prefix (layers 0-8 only)."""
        if max(self.layers) > 8:
            raise ValueError(
                f"the paper's notation has one digit per layer (1-9); layer {max(self.layers)} "
                f"(0-based) does not fit: use the 0-based form {self.to_compact()!r}"
            )
        groups = []
        for unit, reps in _tokens(list(self.layers)):
            digits = "".join(str(i + 1) for i in unit)
            groups.append(digits if reps == 1 else f"{digits}*{reps}")
        return PAPER_PREFIX + "-".join(groups)

    def source_layer_counts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for i in self.layers:
            counts[i] = counts.get(i, 0) + 1
        return counts


# ---- helpers for common plans ----------------------------------------------------------------
def gstack_plan(source_layers: int, growth_factor: int) -> StackingPlan:
    """G_stack: the whole source model repeated, ``[0..L-1] * g``."""
    _need_positive(source_layers=source_layers, growth_factor=growth_factor)
    return StackingPlan(tuple(range(source_layers)) * growth_factor)


def interleave_plan(source_layers: int, growth_factor: int) -> StackingPlan:
    """Each source layer repeated in place: ``0,0,1,1,...`` for g = 2."""
    _need_positive(source_layers=source_layers, growth_factor=growth_factor)
    return StackingPlan(tuple(i for i in range(source_layers) for _ in range(growth_factor)))


def shrink_plan(num_layers: int) -> StackingPlan:
    """Inheritune: keep the first k layers."""
    _need_positive(num_layers=num_layers)
    return StackingPlan(tuple(range(num_layers)))


def _need_positive(**values: int) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


# ---- parsing -----------------------------------------------------------------------------------
def parse_stacking_list(text: str) -> StackingPlan:
    """Parse any accepted form (see the module docstring) into a StackingPlan."""
    if not isinstance(text, str):
        raise ValueError(f"--stacking-list must be a string, got {type(text).__name__}")
    compact = re.sub(r"\s+", "", text)
    if compact.startswith(PAPER_PREFIX):
        return StackingPlan(tuple(_parse_paper(compact[len(PAPER_PREFIX):], text)))
    if compact.startswith("[") and compact.endswith("]"):
        compact = compact[1:-1]
    try:
        layers = _Parser(compact).parse()
    except ValueError as err:
        hint = ""
        if re.fullmatch(r"[1-9]+(\*\d+)?(-[1-9]+(\*\d+)?)*", compact) and "-" in compact:
            hint = f"; if this is the paper's 1-based notation, write '{PAPER_PREFIX}{compact}'"
        raise ValueError(f"cannot parse --stacking-list {text!r}: {err}{hint}") from None
    return StackingPlan(tuple(layers))


def _parse_paper(body: str, original: str) -> list[int]:
    def fail(why: str) -> ValueError:
        return ValueError(
            f"cannot parse paper stacking string {original!r}: {why}. Expected groups of 1-based "
            f"single-digit layers separated by '-', each optionally repeated with '*k', "
            f"e.g. '{PAPER_PREFIX}12-3456*5-56'"
        )

    if not body:
        raise fail("it is empty")
    layers: list[int] = []
    for group in body.split("-"):
        m = re.fullmatch(r"([0-9]+)(?:\*([0-9]+))?", group)
        if not m:
            raise fail(f"group {group!r} is not digits with an optional '*k'")
        digits, reps = m.group(1), m.group(2)
        if "0" in digits:
            raise fail(f"group {group!r} has digit 0 but layers are 1-based (1-9)")
        count = _repeat_count(reps, group, fail) if reps is not None else 1
        layers.extend([int(d) - 1 for d in digits] * count)
        _check_length(len(layers), fail)
    return layers


def _repeat_count(reps: str, where: str, fail) -> int:
    if len(reps) > 1 and reps.startswith("0"):
        raise fail(f"repeat count {reps!r} in {where!r} has a leading zero")
    count = int(reps)
    if count < 1:
        raise fail(f"repeat count in {where!r} must be >= 1")
    return count


def _check_length(n: int, fail) -> None:
    if n > MAX_PLAN_LENGTH:
        raise fail(f"it expands to more than {MAX_PLAN_LENGTH} layers")


class _Parser:
    """Recursive descent over: list := item (',' item)*; item := atom ('*' int)?;
    atom := int ('-' int)? | '(' list ')'."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def parse(self) -> list[int]:
        if not self.text:
            raise ValueError("it is empty")
        layers = self._list()
        if self.pos != len(self.text):
            raise self._error(f"unexpected {self.text[self.pos]!r}")
        return layers

    def _error(self, why: str) -> ValueError:
        return ValueError(f"{why} at position {self.pos}")

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _list(self) -> list[int]:
        layers = self._item()
        while self._peek() == ",":
            self.pos += 1
            layers = layers + self._item()
            _check_length(len(layers), self._error)
        return layers

    def _item(self) -> list[int]:
        layers = self._atom()
        if self._peek() == "*":
            self.pos += 1
            start = self.pos
            count = self._int("a repeat count after '*'")
            if count < 1:
                self.pos = start
                raise self._error("repeat count must be >= 1")
            if len(layers) * count > MAX_PLAN_LENGTH:
                raise self._error(f"it expands to more than {MAX_PLAN_LENGTH} layers")
            layers = layers * count
        return layers

    def _atom(self) -> list[int]:
        if self._peek() == "(":
            self.pos += 1
            if self._peek() == ")":
                raise self._error("empty parentheses")
            layers = self._list()
            if self._peek() != ")":
                raise self._error("missing ')'")
            self.pos += 1
            return layers
        first = self._int("a layer number")
        if self._peek() != "-":
            return [first]
        self.pos += 1
        last = self._int("the end of a range after '-'")
        if last < first:
            raise self._error(f"range {first}-{last} is descending; list the layers explicitly")
        if last - first + 1 > MAX_PLAN_LENGTH:
            raise self._error(f"range {first}-{last} is longer than {MAX_PLAN_LENGTH} layers")
        return list(range(first, last + 1))

    def _int(self, what: str) -> int:
        m = re.compile(r"[0-9]+").match(self.text, self.pos)
        if not m:
            found = repr(self._peek()) if self._peek() else "the end"
            raise self._error(f"expected {what}, found {found}")
        digits = m.group(0)
        if len(digits) > 1 and digits.startswith("0"):
            raise self._error(f"number {digits!r} has a leading zero (0-based layers are written 0, 1, 2, ...)")
        self.pos = m.end()
        return int(digits)


# ---- compact rendering -------------------------------------------------------------------------
def _tokens(layers: list[int]) -> list[tuple[list[int], int]]:
    """Split a list greedily into (unit, repeat) pieces, preferring the longest repeated block
    when it covers more than the ascending run that starts at the same place."""
    pieces: list[tuple[list[int], int]] = []
    i, n = 0, len(layers)
    while i < n:
        run = 1
        while i + run < n and layers[i + run] == layers[i + run - 1] + 1:
            run += 1
        best_unit, best_reps = run, 1
        for unit in range(1, (n - i) // 2 + 1):
            reps = 1
            while i + (reps + 1) * unit <= n and (
                layers[i + reps * unit : i + (reps + 1) * unit] == layers[i : i + unit]
            ):
                reps += 1
            if reps > 1 and unit * reps > best_unit * best_reps:
                best_unit, best_reps = unit, reps
        pieces.append((layers[i : i + best_unit], best_reps))
        i += best_unit * best_reps
    return pieces


def _runs(layers: list[int]) -> str:
    out, i = [], 0
    while i < len(layers):
        j = i
        while j + 1 < len(layers) and layers[j + 1] == layers[j] + 1:
            j += 1
        out.append(str(layers[i]) if i == j else f"{layers[i]}-{layers[j]}")
        i = j + 1
    return ",".join(out)


def _compact(layers: list[int]) -> str:
    parts = []
    for unit, reps in _tokens(layers):
        if reps == 1:
            parts.append(_runs(unit))
            continue
        body = _runs(unit) if _is_run(unit) else _compact(unit)
        parts.append(f"{body}*{reps}" if _is_run(unit) else f"({body})*{reps}")
    return ",".join(parts)


def _is_run(unit: list[int]) -> bool:
    return all(b == a + 1 for a, b in zip(unit, unit[1:]))
