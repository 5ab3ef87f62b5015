"""Canonical plan hashing: layout-independent, code-sensitive, algorithm recorded, syntax errors reported."""

import ast
import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from returns.result import Failure, Success

import fedpipe
from fedpipe.approval import (
    CANONICAL_FORM,
    DEFAULT_ALGORITHM,
    HashAlgorithm,
    PlanSyntaxError,
    canonical_source,
    hash_function,
    plan_digest,
)
from fedpipe.errors import is_public_safe
from fedpipe.testing.fakes import source_digest

PLAN = '''"""My plan."""
import math


class MyPlan(object):
    """Trains."""

    lr: float = 0.01

    def training_routine(self, *, report, gpu=None):
        total = sum(x ** 2 for x in range(10) if x % 2)  # odd squares
        return math.floor(total * self.lr)
'''

# Same code, different layout: comments, blank lines, indentation, quotes, parentheses, trailing
# commas, continuations, numeric spelling and the u prefix.
PLAN_RELAID = """'''My plan.'''
import math
class MyPlan(object):
        u'''Trains.'''
        lr : float = 1e-2
        def training_routine(self, *, report, gpu = None,):   # one comment
                total = (sum(x**2
                             for x in range(0xA) if x % 2))
                return math.floor(total \\
                                  * self.lr)
"""

FEDPIPE_SOURCES = sorted(Path(fedpipe.__file__).parent.rglob("*.py"))

# The canonical form is a stored format: a change that moves this digest needs a new CANONICAL_FORM.
PINNED_SHA256 = "2b93632b69b5360cdd770a374ce9c69b5490d760ea080493d8ec460951e8eab9"


def test_same_source_same_digest() -> None:
    assert plan_digest(PLAN) == plan_digest(PLAN)


def test_layout_comments_and_literal_spelling_do_not_change_the_digest() -> None:
    assert plan_digest(PLAN_RELAID) == plan_digest(PLAN)


@pytest.mark.parametrize("path", FEDPIPE_SOURCES, ids=lambda p: p.name)
def test_digest_invariant_under_unparse(path: Path) -> None:
    """Real code, reprinted by ast.unparse (comments gone, everything re-laid out), keeps its digest."""
    source = path.read_text()
    assert plan_digest(ast.unparse(ast.parse(source))) == plan_digest(source)


@pytest.mark.parametrize(
    "edit",
    [
        ("0.01", "0.02"),
        ("x % 2", "x % 3"),
        ("total", "totals"),
        ("Trains.", "Trains!"),
        ("import math", "import math as math"),
        ("*, report", "report"),
        ("gpu=None", "gpu=False"),
        ("(object)", "()"),
    ],
    ids=["constant", "operator", "name", "docstring", "alias", "signature", "default", "base"],
)
def test_code_changes_change_the_digest(edit: tuple[str, str]) -> None:
    changed = PLAN.replace(*edit)
    assert changed != PLAN
    assert plan_digest(changed) != plan_digest(PLAN)


constants = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.complex_numbers(allow_nan=False, allow_infinity=False, max_magnitude=1e6),
    st.text(max_size=8),
    st.binary(max_size=8),
)


@given(a=constants, b=constants)
def test_distinct_constants_have_distinct_digests(a: object, b: object) -> None:
    same = (type(a), repr(a)) == (type(b), repr(b))
    assert (plan_digest(f"x = {a!r}") == plan_digest(f"x = {b!r}")) == same


@given(st.text(max_size=200))
def test_canonical_source_never_raises(text: str) -> None:
    result = canonical_source(text)
    assert isinstance(result, Success | Failure)


@pytest.mark.parametrize("algorithm", list(HashAlgorithm))
def test_each_algorithm_uses_its_own_hash_function_and_is_recorded(algorithm: HashAlgorithm) -> None:
    digest = plan_digest(PLAN, algorithm).unwrap()
    canon = canonical_source(PLAN).unwrap().encode()
    expected = hashlib.new(algorithm.value.lower(), canon).hexdigest()
    assert digest.hexdigest == expected == hash_function(algorithm)(canon)
    assert (digest.algorithm, digest.canonical_form) == (algorithm, CANONICAL_FORM)


def test_algorithms_give_distinct_digests_and_blake2b_is_not_blake2s() -> None:
    digests = {a: plan_digest(PLAN, a).unwrap().hexdigest for a in HashAlgorithm}
    assert len(set(digests.values())) == len(HashAlgorithm)
    assert len(digests[HashAlgorithm.BLAKE2B]) == 128
    assert len(digests[HashAlgorithm.BLAKE2S]) == 64
    assert plan_digest(PLAN).unwrap().algorithm is DEFAULT_ALGORITHM is HashAlgorithm.SHA256


def test_canonical_form_is_pinned() -> None:
    assert canonical_source("x = 1") == Success(
        'Module(body=[Assign(targets=[Name(id=s"x";ctx=Store();),];value=Constant(value=i0x1;);),];)'
    )
    assert plan_digest(PLAN).unwrap().hexdigest == PINNED_SHA256


@pytest.mark.parametrize(
    ("source", "line"),
    [
        ("def f(:\n    pass\n", 1),
        ("class P:\n    x = 1\n      y = 2\n", 3),
        ("x = (1,\n", 1),
        ("if True:\n\tx = 1\n        y = 2\n", 3),
        ("x = 1\nreturn 5 +\n", 2),
        ("x = '\0'", None),
    ],
    ids=["bad signature", "indentation", "unclosed", "tabs", "truncated", "null byte"],
)
def test_syntax_errors_are_reported_not_raised(source: str, line: int | None) -> None:
    result = plan_digest(source)
    assert isinstance(result, Failure)
    error = result.failure()
    assert isinstance(error, PlanSyntaxError)
    if line is not None:
        assert error.line == line
        assert f"syntax error at line {line}" in error.public()
    assert is_public_safe(error.public())


def test_fake_registry_keys_plans_by_the_canonical_digest() -> None:
    assert source_digest(PLAN_RELAID) == source_digest(PLAN) == plan_digest(PLAN).unwrap().hexdigest
