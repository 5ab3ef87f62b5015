"""Decode-memory bombs: the peak RSS of a fresh process stays below the codec's stated bound.

Each bomb file is built here and decoded in a fresh interpreter (``sys.executable``) that reports
its resident memory just before the decode (``VmRSS``) and its peak just after (``VmHWM``, the
high-water mark): taking the growth from the current, not the peak, RSS before counts every byte
the decode may have reused. The bound asserted is the codec's stated one,
``Limits.memory_bound(size)`` (16 times the input plus 64 MiB), plus the input buffer that
``load_file`` reads the file into, plus ``SLACK`` for what no value is charged for. The same
files are also sent as aggregator arguments and aux vars through a real round over fakes: those
reach the plan as read-only views (``fedpipe.views``), so the round costs what their decoding
does, where freezing and thawing copies used to triple it. (The views themselves are tested in
``tests/unit/test_views.py``.)
"""

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from fedpipe.codec import DEFAULT_LIMITS, dump_file
from tests.adapters.test_codec import array32, ext

MiB = 1024**2
# what a decode takes besides its values: the interpreter's and the allocators' own growth, the
# decoder's reader and views, a Failure and its traceback
SLACK = 8 * MiB
N = 10_000_000 - 1  # with its array, within max_elements: memory is what refuses the maps

# the start of both scripts: status("VmRSS") is the resident memory now, status("VmHWM") its peak
STATUS = """
import json, sys
from pathlib import Path

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(key)
"""

MEASURE = (
    STATUS
    + """
if sys.argv[2] == "torch":
    import torch
    torch.ones(2, 2).view(4)  # its lazy start-up, before the measure
from fedpipe.codec import load_file

rss = status("VmRSS")
result = load_file(Path(sys.argv[1]))
peak = status("VmHWM")
failure = result.failure().reason if type(result).__name__ == "Failure" else None
print(json.dumps({"growth": peak - rss, "failure": failure}))
"""
)

ROUND = (
    STATUS
    + """
from fedpipe import execute_round
from fedpipe.settings import NodeSettings
from fedpipe.testing import FakeNode

where, bomb, root = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
node = FakeNode(settings=NodeSettings(node_id="node-1", root=root))
url = node.exchange.publish("bomb", bomb.read_bytes())
if where == "aggregator_args":
    request = node.request(aggregator_args={"bomb": {"url": url}, "lr": 0.1})
else:
    request = node.request(aux_var_urls=[url])
rss = status("VmRSS")
reply = execute_round(request, node.ports, node.settings).reply
peak = status("VmHWM")
plan = node.plans.instances[-1] if node.plans.instances else None
got = getattr(plan, "aggregator_args" if where == "aggregator_args" else "aux_in", None)
bomb_value = got["bomb"] if got is not None and "bomb" in got else None
print(json.dumps({
    "growth": peak - rss,
    "error": None if reply.error is None else [str(reply.error.code), reply.error.step],
    "kinds": None if bomb_value is None else [type(got).__name__, type(bomb_value).__name__],
    "length": None if bomb_value is None else len(bomb_value),
}))
"""
)


def run(script: str, *args: object) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def empty_maps(n: int) -> bytes:
    return array32(n, b"\x80" * n)


def big_int_ext() -> bytes:
    size = DEFAULT_LIMITS.max_int_bytes
    return ext("int", b"\xc6" + size.to_bytes(4, "big") + b"\xa5" * size)


FLOAT = b"\xcb" + struct.pack(">d", 1.5)
# name -> (bytes, whether it decodes within the bound); each is 2 to 12 MiB
BOMBS: dict[str, tuple[Any, bool]] = {
    "10M empty maps": (lambda: empty_maps(N), False),
    "10M empty arrays": (lambda: array32(N, b"\x90" * N), False),
    "1M one-char strings (shared)": (lambda: array32(1_000_000, b"\xa1x" * 1_000_000), True),
    "3M three-char strings": (lambda: array32(3_000_000, b"\xa3abc" * 3_000_000), True),
    "lists nested to the depth limit, repeated": (
        lambda: array32(150_000, (b"\x91" * 63 + b"\xc0") * 150_000),
        False,
    ),
    "10M small ints (shared, numpy's fast path)": (lambda: array32(N, b"\x01" * N), True),
    "10M negative fixints (an int object each)": (lambda: array32(N, b"\xe0" * N), False),
    "1.1M float64s (numpy's fast path)": (lambda: array32(1_100_000, FLOAT * 1_100_000), True),
    "1.1M float64s and a nil (one by one)": (lambda: array32(1_100_000, FLOAT * 1_099_999 + b"\xc0"), True),
    "a map of 1M keys": (
        lambda: (
            b"\xdf"
            + (1_000_000).to_bytes(4, "big")
            + b"".join(b"\xa7k%06d\x01" % i for i in range(1_000_000))
        ),
        True,
    ),
    "big ints at max_int_bytes, repeated": (lambda: array32(10, big_int_ext() * 10), True),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_a_decode_bomb_stays_below_the_memory_bound(tmp_path: Path, name: str) -> None:
    build, fits = BOMBS[name]
    path = tmp_path / "bomb.mpk"
    path.write_bytes(build())
    size = path.stat().st_size
    report = run(MEASURE, path, "numpy")
    if fits:
        assert report["failure"] is None
    else:
        bound = DEFAULT_LIMITS.memory_bound(size)
        assert report["failure"] == f"decoded payload would exceed {bound} bytes of memory"
    assert report["growth"] <= DEFAULT_LIMITS.memory_bound(size) + size + SLACK


def test_a_large_state_dict_decodes_at_about_its_size(tmp_path: Path) -> None:
    """A model's worth of tensors (20M float32 parameters over 8 layers and a few small ones)
    costs its bytes once decoded, beside the input buffer: the factor is ~1 for buffers."""
    weights = {f"layer{i}.weight": torch.full((2_500_000,), float(i)) for i in range(8)}
    weights |= {f"layer{i}.bias": torch.zeros(64) for i in range(8)} | {"steps": torch.tensor(7)}
    path = tmp_path / "params.mpk"
    dump_file({"model_weights": weights, "sample_size": 12}, path)
    size = path.stat().st_size
    del weights
    report = run(MEASURE, path, "torch")
    assert report["failure"] is None
    assert report["growth"] <= size + size + 17 * 4096 + SLACK  # the input buffer, then the tensors


def round_file(where: str, n: int) -> bytes:
    """``n`` empty maps as ROUND sends them: an aggregator argument, or the aux var ``bomb``."""
    return empty_maps(n) if where == "aggregator_args" else b"\x81\xa4bomb" + empty_maps(n)


@pytest.mark.parametrize("where", ["aggregator_args", "aux_vars"])
def test_a_bomb_sent_to_a_round_costs_no_more_than_its_decoding(tmp_path: Path, where: str) -> None:
    path = tmp_path / "bomb.mpk"
    path.write_bytes(round_file(where, N))
    size = path.stat().st_size
    report = run(ROUND, where, path, tmp_path / "node")
    step = "fetch_aggregator_args" if where == "aggregator_args" else "fetch_aux_vars"
    assert report["error"] == ["bad_payload", step]
    assert report["growth"] <= DEFAULT_LIMITS.memory_bound(size) + size + SLACK


@pytest.mark.parametrize("where", ["aggregator_args", "aux_vars"])
def test_a_large_value_reaches_the_plan_as_a_view_not_a_copy(tmp_path: Path, where: str) -> None:
    """1M empty maps (1 MiB, 72 MB decoded) fit the bound; the plan gets them without the copies
    (a frozen one, then a thawed one) that used to triple the round's memory."""
    n = 1_000_000
    path = tmp_path / "arg.mpk"
    path.write_bytes(round_file(where, n))
    size = path.stat().st_size
    report = run(ROUND, where, path, tmp_path / "node")
    assert report["error"] is None
    assert report["kinds"] == ["MapView", "ListView"] and report["length"] == n
    assert report["growth"] <= DEFAULT_LIMITS.memory_bound(size) + size + SLACK
