"""The plain-data encoding that carries candidate return values out of the sandbox, and strict equality."""
from __future__ import annotations

import json
import math

import pytest

from r1mega.rewards.plain import Unplain, contains, dumps, loads, same

VALUES = [None, True, False, 0, -31, 2 ** 5000, 0.5, -0.0, math.inf, 1 + 2j, "", "x\n\u00e9", b"\x00\xff",
          [1, [2.5, None]], (1, (2,)), (), {1, "a"}, frozenset({(1, 2)}), {"k": [1], 2: {3: (4,)}}]


@pytest.mark.parametrize("value", VALUES, ids=[repr(v)[:20] for v in VALUES])
def test_round_trip_keeps_value_and_exact_type(value):
    back = loads(dumps(value))
    assert type(back) is type(value) and same(back, value) and repr(back) == repr(value)


def test_subclasses_leave_as_their_base_value():
    class Liar(int):
        def __eq__(self, other):
            return True
        __hash__ = int.__hash__

    class Text(str):
        def __eq__(self, other):
            return True
        __hash__ = str.__hash__

    assert json.loads(dumps(Liar(7))) == ["i", "7"]
    back = loads(dumps([Liar(7), Text("no")]))
    assert [type(v) for v in back] == [int, str] and back == [7, "no"] and not same(back, [8, "yes"])
    assert json.loads(dumps(object())) == ["?", "object"]
    assert json.loads(dumps((x for x in [1]))) == ["?", "generator"]


@pytest.mark.parametrize("text", [
    '["?", "Liar"]', '["i", 5]', '["b", 1]', '["l", "x"]', '["S", [["l", []]]]', '["d", [[["l", []], ["n"]]]]',
    '["n", 1]', '["Z", 1]', '[]', '{"i": "5"}', 'not json', '["s", "a", "b"]', '["f", "' + "1" * 50 + '"]',
    '["l", ' * 300 + '["n"]' + ']' * 300,
])
def test_decoder_rejects_anything_but_well_formed_plain_data(text):
    with pytest.raises(Unplain):
        loads(text)


def test_strict_equality_rules():
    assert not same(True, 1) and not same(1, True) and not same(0, False) and same(True, True)
    assert same(5, 5.0) and same(1j, 1j) and not same(math.nan, math.nan)
    assert not same([1, True], [1, 1]) and not same((1,), [1]) and same({1, 2}, frozenset({2, 1}))
    assert not same({True: "a"}, {1: "a"}) and not same({1}, {True}) and same({"a": [1]}, {"a": [1.0]})
    assert not same("1", 1) and not same(None, 0) and same(None, None)
    assert contains([1, 2], 2) and not contains([1, 2], True) and contains("abc", "b") and not contains({1: 0}, True)
