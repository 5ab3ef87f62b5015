"""Training-plan identity: a SHA-256 (or other named digest) of a canonical form of the plan source.

The canonical form is fedpipe's own serialisation of the source's abstract syntax tree
(``CANONICAL_FORM = "ast-v1"``), so the digest depends neither on a minifier's version (the
reference's D15) nor on how the source is laid out:

* ignored: comments, blank lines, indentation width, line breaks and continuations, redundant
  parentheses, quote style, string-prefix ``u``, trailing commas, and numeric spelling (``1_000``
  and ``1000``, ``0x10`` and ``16`` are the same constant);
* significant: everything the compiler sees, docstrings included (a docstring is a value that
  code can read through ``__doc__``, so editing one is a code change).

Each syntax node is written as its type name and its fields in declaration order, with
positions left out and absent fields (``None`` or an empty list) skipped, so that fields added
by later Python versions with empty defaults (``type_params`` in 3.12) leave the form unchanged.
Constants are written with a type tag and an exact, version-independent spelling (``float.hex``,
hexadecimal integers of any size, JSON-escaped strings). A source that does not parse has no
digest: ``plan_digest`` returns a ``PlanSyntaxError`` saying where.

Every digest records its algorithm and canonical form; registries store both and match on both.
Wherever a digest is shown (the node log, a refused round's reply, ``fedpipe plans``, the demo) it
is written one way: ``<ALGORITHM>:<hex>`` (``digest_text``), in full, or cut to its first
``SHORT_HEX`` hex digits in lists.
"""

import ast
import enum
import functools
import hashlib
import json
from collections.abc import Callable, Iterable
from typing import Any

from attrs import frozen
from returns.result import Failure, Result, Success

__all__ = [
    "CANONICAL_FORM",
    "DEFAULT_ALGORITHM",
    "SHORT_HEX",
    "HashAlgorithm",
    "PendingPlan",
    "PlanDigest",
    "PlanSyntaxError",
    "canonical_source",
    "digest_text",
    "hash_function",
    "plan_digest",
    "plan_digests",
]

CANONICAL_FORM = "ast-v1"
"""Version tag of the canonical form; stored next to every digest."""


class HashAlgorithm(enum.StrEnum):
    """Digest algorithms a node may hash plans with (the reference's names; BLAKE2B is blake2b here)."""

    SHA256 = "SHA256"
    SHA384 = "SHA384"
    SHA512 = "SHA512"
    SHA3_256 = "SHA3_256"
    SHA3_384 = "SHA3_384"
    SHA3_512 = "SHA3_512"
    BLAKE2B = "BLAKE2B"
    BLAKE2S = "BLAKE2S"


DEFAULT_ALGORITHM = HashAlgorithm.SHA256

_HASHLIB_NAME: dict[HashAlgorithm, str] = {
    HashAlgorithm.SHA256: "sha256",
    HashAlgorithm.SHA384: "sha384",
    HashAlgorithm.SHA512: "sha512",
    HashAlgorithm.SHA3_256: "sha3_256",
    HashAlgorithm.SHA3_384: "sha3_384",
    HashAlgorithm.SHA3_512: "sha3_512",
    HashAlgorithm.BLAKE2B: "blake2b",
    HashAlgorithm.BLAKE2S: "blake2s",
}


SHORT_HEX = 12
"""Hex digits of a digest shown in lists (``plans list``, the demo); enough to tell plans apart."""


def digest_text(algorithm: HashAlgorithm | str, hexdigest: str, *, short: bool = False) -> str:
    """The one written form of a plan digest: ``ALGORITHM:hex``, cut to ``SHORT_HEX`` digits when ``short``.

    >>> digest_text(HashAlgorithm.SHA256, "bd4a4980c1e2" + "0" * 52, short=True)
    'SHA256:bd4a4980c1e2'
    """
    return f"{HashAlgorithm(algorithm).value}:{hexdigest[:SHORT_HEX] if short else hexdigest}"


def hash_function(algorithm: HashAlgorithm) -> Callable[[bytes], str]:
    """The hex-digest function for ``algorithm`` (each name maps to its own hashlib function).

    >>> hash_function(HashAlgorithm.BLAKE2B)(b"") == hashlib.blake2b(b"").hexdigest()
    True
    """
    name = _HASHLIB_NAME[algorithm]
    return lambda data: hashlib.new(name, data).hexdigest()


@frozen(kw_only=True)
class PlanSyntaxError:
    """Why a plan source has no canonical form: it does not parse as Python."""

    message: str
    line: int | None = None

    def public(self) -> str:
        """A researcher-safe sentence (no paths, no traceback)."""
        where = f" at line {self.line}" if self.line else ""
        return f"The training plan source is not valid Python (syntax error{where})."


@frozen(kw_only=True)
class PlanDigest:
    """A plan's identity: hex digest, the algorithm that made it and the canonical form it hashed."""

    hexdigest: str
    algorithm: HashAlgorithm = DEFAULT_ALGORITHM
    canonical_form: str = CANONICAL_FORM

    def text(self, *, short: bool = False) -> str:
        """This digest as ``digest_text`` writes it (``SHA256:<hex>``)."""
        return digest_text(self.algorithm, self.hexdigest, short=short)


@frozen(kw_only=True)
class PendingPlan:
    """A plan a round refused, as the approval registry keeps it for the owner's review."""

    plan_id: str
    digest: PlanDigest


def _constant(value: object) -> str:
    # bool before int (bool is an int); hex() for ints has no digit limit, float.hex is exact
    if value is None:
        return "None"
    if value is Ellipsis:
        return "..."
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return f"i{value:#x}"
    if isinstance(value, float):
        return f"f{value.hex()}"
    if isinstance(value, complex):
        return f"c({value.real.hex()},{value.imag.hex()})"
    if isinstance(value, str):
        return "s" + json.dumps(value)
    if isinstance(value, bytes):
        return f"b{value.hex()}"
    if isinstance(value, tuple | frozenset):  # only from constant folding; kept for completeness
        items = sorted(map(_constant, value)) if isinstance(value, frozenset) else map(_constant, value)
        return "t(" + ",".join(items) + ")"
    raise TypeError(f"unexpected constant in syntax tree: {type(value).__name__}")


_SKIPPED_FIELDS = frozenset({"kind", "type_comment"})  # u-prefix marker, `# type:` comments


def _emit(tree: ast.AST) -> str:
    # Iterative, so that any tree ast.parse accepts is written without touching the recursion
    # limit. The stack holds nodes, lists, and str pieces that are already output text.
    out: list[str] = []
    stack: list[ast.AST | list[Any] | str] = [tree]
    push = stack.append
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        parts: list[ast.AST | list[Any] | str]
        if isinstance(item, ast.AST):
            parts = [type(item).__name__ + "("]
            for name in item._fields:
                if name in _SKIPPED_FIELDS:
                    continue
                value = getattr(item, name, None)
                if isinstance(item, ast.Constant) and name == "value":
                    parts.append("value=" + _constant(value) + ";")
                elif value is None or (isinstance(value, list) and not value):
                    continue
                elif isinstance(value, ast.AST | list):
                    parts += (name + "=", value, ";")
                else:
                    parts.append(name + "=" + _constant(value) + ";")
            parts.append(")")
        else:
            parts = ["["]
            for element in item:
                parts += (element if isinstance(element, ast.AST | list) else _constant(element), ",")
            parts.append("]")
        for part in reversed(parts):
            push(part)
    return "".join(out)


@functools.lru_cache(maxsize=16)  # a node sees the same few plans every round; parsing is the cost
def canonical_source(source: str) -> Result[str, PlanSyntaxError]:
    """The canonical form of ``source`` (see the module docstring), or where it fails to parse.

    >>> canonical_source("x = (1)  # one") == canonical_source("x=1")
    True
    >>> canonical_source("def f(:").failure().line
    1
    """
    try:
        tree = ast.parse(source, filename="<training plan>", mode="exec")
    except SyntaxError as err:  # IndentationError and TabError included
        return Failure(PlanSyntaxError(message=err.msg or "invalid syntax", line=err.lineno))
    except (ValueError, RecursionError, MemoryError) as err:  # null bytes; absurd nesting
        return Failure(PlanSyntaxError(message=f"{type(err).__name__}: {err}"))
    return Success(_emit(tree))


def plan_digest(
    source: str, algorithm: HashAlgorithm = DEFAULT_ALGORITHM
) -> Result[PlanDigest, PlanSyntaxError]:
    """Digest the canonical form of ``source`` with ``algorithm``.

    >>> a = plan_digest("class P:\\n    pass\\n").unwrap()
    >>> b = plan_digest("class P:  # the plan\\n\\n    pass").unwrap()
    >>> a == b, a.algorithm, len(a.hexdigest)
    (True, <HashAlgorithm.SHA256: 'SHA256'>, 64)
    >>> plan_digest("class P: pass = 1").failure().line
    1
    """
    return canonical_source(source).map(
        lambda canon: PlanDigest(
            hexdigest=hash_function(algorithm)(canon.encode("utf-8")),
            algorithm=algorithm,
            canonical_form=CANONICAL_FORM,
        )
    )


def plan_digests(
    source: str, algorithms: Iterable[HashAlgorithm]
) -> Result[tuple[PlanDigest, ...], PlanSyntaxError]:
    """Digest ``source`` with each of ``algorithms`` (parsed once; duplicates dropped, order kept).

    >>> [d.algorithm.value for d in plan_digests("x = 1", ["SHA256", "SHA512", "SHA256"]).unwrap()]
    ['SHA256', 'SHA512']
    """
    return canonical_source(source).map(
        lambda canon: tuple(
            PlanDigest(
                hexdigest=hash_function(HashAlgorithm(a))(canon.encode("utf-8")),
                algorithm=HashAlgorithm(a),
                canonical_form=CANONICAL_FORM,
            )
            for a in dict.fromkeys(algorithms)
        )
    )
