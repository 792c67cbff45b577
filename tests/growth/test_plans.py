import pytest
from hypothesis import given, settings, strategies as st

from megastack.growth.plans import (
    MAX_PLAN_LENGTH,
    StackingPlan,
    gstack_plan,
    interleave_plan,
    parse_stacking_list,
    shrink_plan,
)

# Plans built from repeated blocks, like real stacking lists.
blocks = st.lists(st.integers(0, 40), min_size=1, max_size=6)
plans = st.lists(st.tuples(blocks, st.integers(1, 5)), min_size=1, max_size=5).map(
    lambda parts: StackingPlan(tuple(i for block, reps in parts for _ in range(reps) for i in block))
)
small_layer_plans = st.lists(st.integers(0, 8), min_size=1, max_size=40).map(lambda l: StackingPlan(tuple(l)))


@pytest.mark.parametrize("text, expected", [
    ("0,1,2,3,4,5,0,1", [0, 1, 2, 3, 4, 5, 0, 1]),
    ("0-5*4", list(range(6)) * 4),
    ("0,1,(2-5)*5,4,5", [0, 1] + [2, 3, 4, 5] * 5 + [4, 5]),
    ("paper:12-3456*5-56", [0, 1] + [2, 3, 4, 5] * 5 + [4, 5]),
    (" paper: 123456*4 ", list(range(6)) * 4),
    ("[0, 1, 2]", [0, 1, 2]),
    ("(0,(1-2)*2)*2", [0, 1, 2, 1, 2] * 2),
    ("3*3", [3, 3, 3]),
    ("10-11", [10, 11]),
])
def test_accepted_forms(text, expected):
    assert parse_stacking_list(text).layers == tuple(expected)


@given(plans)
@settings(max_examples=200, deadline=None)
def test_compact_round_trip(plan):
    text = plan.to_compact()
    assert parse_stacking_list(text) == plan
    assert len(text) <= len(",".join(map(str, plan.layers)))


@given(plans)
@settings(max_examples=100, deadline=None)
def test_explicit_list_round_trip(plan):
    assert parse_stacking_list(",".join(map(str, plan.layers))) == plan
    assert parse_stacking_list(str(list(plan.layers))) == plan


@given(small_layer_plans)
@settings(max_examples=150, deadline=None)
def test_paper_round_trip(plan):
    assert parse_stacking_list(plan.to_paper()) == plan
    assert parse_stacking_list(parse_stacking_list(plan.to_paper()).to_compact()) == plan


def test_compact_forms_are_readable():
    assert gstack_plan(6, 4).to_compact() == "0-5*4"
    assert interleave_plan(3, 2).to_compact() == "0*2,1*2,2*2"
    assert parse_stacking_list("paper:12-3456*5-56").to_paper() == "paper:123456-3456*4-56"


@pytest.mark.parametrize("bad", [
    "", " ", ",", "0,", ",0", "0,,1", "1-", "-1", "5-0", "01", "0-05", "(0", "0)", "()", "(0,1",
    "0*0", "0*", "*2", "0**2", "0*2*", "a", "0;1", "0.5", "1e3", "0-5*4,", "[0,1", "0-1-2",
    "12-3456*5-56",  # paper notation without its prefix
    "paper:", "paper:120", "paper:12--34", "paper:12-", "paper:1*0", "paper:1*", "paper:ab",
    "paper:12*02", "0-2000000", f"0*{MAX_PLAN_LENGTH + 1}", "(0-999)*2000",
])
def test_bad_forms_rejected(bad):
    with pytest.raises(ValueError):
        parse_stacking_list(bad)


def test_unprefixed_paper_string_gets_a_hint():
    with pytest.raises(ValueError, match="paper:12-3456"):
        parse_stacking_list("12-3456*5-56")


@given(st.text(alphabet="0123456789,-*()[] :paper", max_size=20))
@settings(max_examples=300, deadline=None)
def test_arbitrary_text_parses_consistently_or_raises_valueerror(text):
    try:
        plan = parse_stacking_list(text)
    except ValueError:
        return
    assert parse_stacking_list(plan.to_compact()) == plan


def test_validate_shows_parsed_list():
    plan = parse_stacking_list("0-5*2")
    plan.validate(6, 12)
    with pytest.raises(ValueError, match=r"source layer\(s\) \[5\].*parsed list: \[0, 1, 2, 3, 4, 5"):
        plan.validate(5, 12)
    with pytest.raises(ValueError, match=r"12 entries but the target model has 24 layers; parsed list"):
        plan.validate(6, 24)


def test_plan_rejects_bad_entries():
    for layers in [(), (-1,), (1.0,), (True,)]:
        with pytest.raises(ValueError):
            StackingPlan(layers)


def test_helpers():
    assert gstack_plan(2, 3).layers == (0, 1, 0, 1, 0, 1)
    assert interleave_plan(2, 3).layers == (0, 0, 0, 1, 1, 1)
    assert shrink_plan(3).layers == (0, 1, 2)
    for bad in [(0, 2), (2, 0)]:
        with pytest.raises(ValueError):
            gstack_plan(*bad)
    with pytest.raises(ValueError):
        shrink_plan(0)


def test_to_paper_rejects_layers_above_nine():
    with pytest.raises(ValueError, match="0-based form '0-9'"):
        StackingPlan(tuple(range(10))).to_paper()
