"""Plain-data values for code rewards: a tagged JSON encoding (never pickle) and strict equality.

Its source is also pasted into the sandbox harnesses (it imports only ``json``), so both sides share one
encoder/decoder. An encoded value is a JSON array ``[tag, payload]``:

``["n"]`` None, ``["b", true]`` bool, ``["i", "-1f"]`` int (hex, no digit limit), ``["f", "0.5"]`` float (repr,
also nan/inf), ``["c", re, im]`` complex, ``["s", "..."]`` str, ``["y", "00ff"]`` bytes, ``["l", [...]]`` list,
``["t", [...]]`` tuple, ``["S", [...]]`` set, ``["F", [...]]`` frozenset, ``["d", [[k, v], ...]]`` dict,
``["?", "typename"]`` anything else (unserialisable: the call fails). A subclass of a plain type is encoded as
its base value, read with the base type's own methods, so its overrides (``__eq__``...) never leave the sandbox.

:func:`decode` is strict: exact JSON types, known tags, bounded depth; it builds only the plain types above.
:func:`same` is the ``==`` that trusted test code uses: a bool equals only a bool, int/float/complex compare
as in Python, containers compare element-wise with the same rules, and non-plain (trusted) objects use ``==``.
"""
import json

MAX_DEPTH = 200
_SEQ = {list: "l", tuple: "t", set: "S", frozenset: "F"}
_SEQ_TYPES = {"l": list, "t": tuple, "S": set, "F": frozenset}
PLAIN_TYPES = (type(None), bool, int, float, complex, str, bytes, list, tuple, set, frozenset, dict)
_NUMBERS = (int, float, complex)


class Unplain(Exception):
    """A value that is not plain data (or an encoding that is not well formed)."""


def encode(x, depth=0):
    if depth > MAX_DEPTH:
        raise Unplain("nested too deeply")
    if x is None:
        return ["n"]
    if isinstance(x, bool):
        return ["b", x is True]
    if isinstance(x, int):
        return ["i", int.__format__(x, "x")]
    if isinstance(x, float):
        return ["f", float.__repr__(x)]
    if isinstance(x, complex):
        return ["c", float.__repr__(complex.__getattribute__(x, "real")),
                float.__repr__(complex.__getattribute__(x, "imag"))]
    if isinstance(x, str):
        return ["s", str.__getitem__(x, slice(None))]
    if isinstance(x, bytes):
        return ["y", bytes.hex(x)]
    if isinstance(x, dict):
        return ["d", [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in dict.items(x)]]
    for base, tag in _SEQ.items():
        if isinstance(x, base):
            return [tag, [encode(v, depth + 1) for v in base.__iter__(x)]]
    return ["?", type(x).__name__[:100]]


def dumps(x):
    """One line of JSON; unserialisable parts become ``["?", typename]``."""
    try:
        return json.dumps(encode(x), separators=(",", ":"))
    except (Unplain, RecursionError, ValueError) as e:
        return json.dumps(["?", type(e).__name__])


def decode(obj, depth=0):
    if depth > MAX_DEPTH or type(obj) is not list or not obj or type(obj[0]) is not str:
        raise Unplain("bad encoding")
    tag, rest = obj[0], obj[1:]
    if tag == "n" and not rest:
        return None
    if tag == "?":
        raise Unplain("unserialisable value %r" % (rest[:1],))
    if tag == "c" and len(rest) == 2 and all(type(v) is str for v in rest):
        return complex(float(rest[0]), float(rest[1]))
    if len(rest) != 1:
        raise Unplain("bad encoding")
    v = rest[0]
    if tag == "b" and type(v) is bool:
        return v
    if tag == "i" and type(v) is str and len(v) < 100_000:
        return int(v, 16)
    if tag == "f" and type(v) is str and len(v) < 40:
        return float(v)
    if tag == "s" and type(v) is str:
        return v
    if tag == "y" and type(v) is str:
        return bytes.fromhex(v)
    if tag in _SEQ_TYPES and type(v) is list:
        return _SEQ_TYPES[tag](decode(e, depth + 1) for e in v)
    if tag == "d" and type(v) is list:
        if not all(type(kv) is list and len(kv) == 2 for kv in v):
            raise Unplain("bad dict encoding")
        return {decode(k, depth + 1): decode(e, depth + 1) for k, e in v}
    raise Unplain("bad encoding")


def loads(text):
    """The plain value of one encoded line; raises :class:`Unplain` for anything else."""
    try:
        return decode(json.loads(text))
    except Unplain:
        raise
    except (ValueError, TypeError, RecursionError, MemoryError, OverflowError) as e:
        raise Unplain("bad encoding: %s" % type(e).__name__)


def _key(x):
    """A hashable key under which two plain values are equal iff :func:`same` says so (hashable values)."""
    t = type(x)
    if t is bool:
        return ("b", x)
    if t in _NUMBERS:
        return ("n", x)
    if t is tuple:
        return ("t", tuple(_key(e) for e in x))
    if t is frozenset:
        return ("F", frozenset(_key(e) for e in x))
    return (t.__name__, x)


def same(a, b):
    """Strict ``a == b`` for plain values (see the module docstring)."""
    ta, tb = type(a), type(b)
    if ta not in PLAIN_TYPES or tb not in PLAIN_TYPES:
        return a == b          # one side is not plain data, so it came from trusted test code
    if (ta is bool) != (tb is bool):
        return False
    if ta in _NUMBERS and tb in _NUMBERS:
        return a == b
    sets = (set, frozenset)
    if ta in sets and tb in sets:
        return {_key(e) for e in a} == {_key(e) for e in b}
    if ta is not tb:
        return False
    if ta in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if ta is dict:
        ka, kb = {_key(k): v for k, v in a.items()}, {_key(k): v for k, v in b.items()}
        return ka.keys() == kb.keys() and all(same(v, kb[k]) for k, v in ka.items())
    return a == b


def contains(container, x):
    """Strict ``x in container``: element-wise :func:`same` for lists, tuples, sets and dict keys."""
    if type(container) in (list, tuple, set, frozenset, dict):
        return any(same(x, e) for e in container)
    return x in container
