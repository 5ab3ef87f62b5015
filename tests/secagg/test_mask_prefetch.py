"""Joye-Libert masks of the next round computed in the idle time: equal, used, dropped, never for a spent tau."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedpipe.codec import loads
from fedpipe.ports import Biprime, ServerKeyShare
from fedpipe.runner import run_round
from fedpipe.secagg import Encoding, JoyeLibertCrypter, KeyMaterial, MaskPool, make_key_material
from fedpipe.secagg.jl import masks
from fedpipe.secagg.masks import decode_ints, encode_ints
from fedpipe.settings import NodeSettings
from fedpipe.testing import FakeNode, ScriptedPlan
from tests.secagg.conftest import fast_keys

SECAGG = {"secagg_servkey_id": "sk", "secagg_biprime_id": "bp", "secagg_random": 0.25}
N_VALUES = 200


@pytest.fixture(scope="module")
def km() -> KeyMaterial:
    return fast_keys(3, seed=21)


@pytest.fixture
def pool() -> Iterator[MaskPool]:
    p = MaskPool(workers=2, chunk=2)
    yield p
    p.close()


def records(km: KeyMaterial, i: int, secagg_id: str = "sk") -> tuple[ServerKeyShare, Biprime]:
    parties = ("researcher-1", "node-0", "node-1", "node-2")
    return km.node_records(i, secagg_id=secagg_id, biprime_id="bp", job_id="job-1", parties=parties)


def n_masks(km: KeyMaterial, n_values: int = N_VALUES) -> int:
    return Encoding().ciphertexts(n_values, km.n_nodes, km.biprime) + 1


def wait_until_computed(pool: MaskPool, key: int, biprime: int, round_number: int, count: int) -> None:
    """Wait for the workers (a deadline only against a hang: no timing is asserted)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        stats = pool.stats(key, biprime, round_number)
        if stats is not None and stats.computed >= count:
            return
        time.sleep(0.02)
    raise AssertionError("the workers did not finish")


def encrypt(crypter: JoyeLibertCrypter, key: ServerKeyShare, bp: Biprime, round_number: int) -> list[int]:
    values = np.linspace(-1, 1, N_VALUES).tolist()
    return crypter.encrypt(
        values, key=key, biprime=bp, round_number=round_number, weight=3, clipping_range=None
    ).unwrap()


def test_frames_round_trip_and_refuse_garbage() -> None:
    values = [0, 1, -1, 7 << 4000, -(3 << 4087)]
    assert decode_ints(encode_ints(values)[4:]) == values
    frame = encode_ints(values)[4:]
    for bad in (frame[:-1], frame + b"\0", b"\0\0\0\1\2\0\0\0\0"):
        with pytest.raises(ValueError, match="frame"):
            decode_ints(bad)


def test_prefetched_masks_equal_masks_computed_directly(km: KeyMaterial, pool: MaskPool) -> None:
    key, bp = records(km, 0)
    crypter = JoyeLibertCrypter(pool=pool)
    crypter.prefetch(key=key, biprime=bp, round_number=8, n_values=N_VALUES)
    count = n_masks(km)
    wait_until_computed(pool, key.key, km.biprime, 8, count)
    assert pool.get(key.key, km.biprime, 8, 0, count) == masks(0, count, 8, key.key, km.biprime)
    # and the ciphertexts are those of a crypter that computes every mask inline
    inline = JoyeLibertCrypter(pool=MaskPool(workers=0))
    assert encrypt(crypter, key, bp, 8) == encrypt(inline, key, bp, 8)


def test_a_prefetched_round_is_encrypted_with_no_new_exponentiation(km: KeyMaterial, pool: MaskPool) -> None:
    """Round 1 is encrypted; after its reply round 2 is prefetched; round 2 then only packs and multiplies."""
    key, bp = records(km, 0)
    crypter = JoyeLibertCrypter(pool=pool)
    encrypt(crypter, key, bp, 1)
    crypter.prefetch_after_reply(claimed_rounds=lambda _: (1,))
    assert pool.stats(key.key, km.biprime, 1) is None  # the used round's masks are forgotten
    count = n_masks(km)
    wait_until_computed(pool, key.key, km.biprime, 2, count)
    before = pool.stats(key.key, km.biprime, 2)
    assert before is not None
    assert before.exponentiations == count
    # the round as the steps run it: start_masks before training, then the update and the factor
    crypter.start_masks(key=key, biprime=bp, round_number=2, n_values=N_VALUES)
    cipher = encrypt(crypter, key, bp, 2)
    crypter.encrypt(
        [0.25], key=key, biprime=bp, round_number=2, weight=3, clipping_range=None, first_index=len(cipher)
    )
    after = pool.stats(key.key, km.biprime, 2)
    assert after is not None
    assert (after.exponentiations, after.inline) == (count, 0)
    stats = crypter.mask_stats(key=key, biprime=bp, round_number=2)
    assert stats is not None
    assert stats["precomputed_fraction"] == 1.0
    assert stats["mask_cpu_seconds"] > 0
    assert set(stats) == {
        "mask_cpu_seconds",
        "mask_wall_seconds",
        "precomputed_fraction",
        "encrypt_wait_seconds",
    }
    assert all(isinstance(v, float) for v in stats.values())


def test_masks_missing_at_encryption_are_counted_as_not_precomputed(km: KeyMaterial) -> None:
    key, bp = records(km, 1)
    crypter = JoyeLibertCrypter(pool=MaskPool(workers=0))
    encrypt(crypter, key, bp, 4)
    stats = crypter.mask_stats(key=key, biprime=bp, round_number=4)
    assert stats is not None
    assert stats["precomputed_fraction"] == 0.0
    assert crypter.mask_stats(key=key, biprime=bp, round_number=5) is None


def test_a_different_round_drops_the_prefetched_masks(km: KeyMaterial, pool: MaskPool) -> None:
    key, bp = records(km, 0)
    crypter = JoyeLibertCrypter(pool=pool)
    crypter.prefetch(key=key, biprime=bp, round_number=5, n_values=N_VALUES)
    assert pool.stats(key.key, km.biprime, 5) is not None
    crypter.start_masks(key=key, biprime=bp, round_number=7, n_values=N_VALUES)
    assert pool.stats(key.key, km.biprime, 5) is None
    # another key's round, even with the same number, does not use them either
    other, _ = records(km, 1, secagg_id="sk-other")
    crypter.prefetch(key=key, biprime=bp, round_number=9, n_values=N_VALUES)
    encrypt(crypter, other, bp, 9)
    assert pool.stats(key.key, km.biprime, 9) is None
    assert pool.stats(other.key, km.biprime, 9) is not None
    # a newer prefetch replaces an older one: one round is held
    crypter.prefetch(key=key, biprime=bp, round_number=11, n_values=N_VALUES)
    crypter.prefetch(key=key, biprime=bp, round_number=12, n_values=N_VALUES)
    assert pool.stats(key.key, km.biprime, 11) is None


def test_a_claimed_round_is_never_prefetched(km: KeyMaterial, pool: MaskPool) -> None:
    key, bp = records(km, 0)
    crypter = JoyeLibertCrypter(pool=pool)
    crypter.prefetch(key=key, biprime=bp, round_number=3, n_values=N_VALUES, claimed_rounds={3})
    assert pool.stats(key.key, km.biprime, 3) is None
    # the key store says the next round is spent: nothing after the reply either
    encrypt(crypter, key, bp, 5)
    crypter.prefetch_after_reply(claimed_rounds=lambda secagg_id: (5, 6) if secagg_id == "sk" else ())
    assert pool.stats(key.key, km.biprime, 6) is None
    # a round this crypter encrypted is spent whatever the store says
    crypter.prefetch(key=key, biprime=bp, round_number=5, n_values=N_VALUES)
    crypter.start_masks(key=key, biprime=bp, round_number=5, n_values=N_VALUES)
    assert pool.stats(key.key, km.biprime, 5) is None

    # a store that cannot answer: nothing is prefetched
    def broken(_: str) -> tuple[int, ...]:
        raise OSError("database locked")

    encrypt(crypter, key, bp, 7)
    crypter.prefetch_after_reply(claimed_rounds=broken)
    assert pool.stats(key.key, km.biprime, 8) is None
    # nothing encrypted since the last reply: nothing to continue from
    crypter.prefetch_after_reply()
    assert pool.stats(key.key, km.biprime, 8) is None


def test_bad_material_is_not_prefetched(km: KeyMaterial, pool: MaskPool) -> None:
    key, bp = records(km, 0)
    crypter = JoyeLibertCrypter(pool=pool)
    for n_values in (-1, True):
        crypter.prefetch(key=key, biprime=bp, round_number=3, n_values=n_values)
    crypter.prefetch(
        key=key, biprime=Biprime(secagg_id="bp", biprime=4096, max_keysize=0), round_number=3, n_values=5
    )
    crypter.prefetch(key=key, biprime=bp, round_number=-1, n_values=5)
    assert pool.worker_pids == ()  # not even a worker was started


@pytest.mark.timeout(90)
def test_close_terminates_the_workers_mid_computation() -> None:
    """Each worker holds a task of 10k full-size masks (minutes of CPU): close does not wait for them."""
    full = make_key_material(3)
    p = MaskPool(workers=2, chunk=10_000)
    crypter = JoyeLibertCrypter(pool=p)
    key, bp = full.node_records(
        0, secagg_id="sk", biprime_id="bp", job_id="job-1", parties=("r", "a", "b", "c")
    )
    crypter.prefetch(key=key, biprime=bp, round_number=1, n_values=32 * 200_000)
    deadline = time.monotonic() + 60
    while p.busy_workers < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert p.busy_workers == 2
    pids = p.worker_pids
    assert len(pids) == 2
    crypter.close()
    assert p.worker_pids == ()
    assert p.busy_workers == 0
    for pid in pids:
        assert not alive(pid)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie left to a parent that is gone does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


CHILD = """
import sys, time
from fedpipe.secagg import MaskPool, make_key_material
km = make_key_material(3)
pool = MaskPool(workers=2, chunk=10_000)
pool.start(km.node_keys[0], km.biprime, 1, 80_000)  # tasks of 10k masks: minutes each
while pool.busy_workers < 2:
    time.sleep(0.02)
print(*pool.worker_pids, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_workers_end_when_their_node_process_is_killed(tmp_path: Path) -> None:
    """A node killed without closing its pool (SIGKILL) leaves no worker computing masks."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    node = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )
    try:
        assert node.stdout is not None
        pids = [int(p) for p in node.stdout.readline().split()]
        assert len(pids) == 2
        assert all(alive(p) for p in pids)
    finally:
        node.send_signal(signal.SIGKILL)
        node.wait()
    deadline = time.monotonic() + 30  # against a hang only: the workers would compute for minutes
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids)


def plan() -> ScriptedPlan:
    return ScriptedPlan(n_samples=40, target=1.0, lr=0.05)


def test_no_mask_is_written_under_the_node_root(tmp_path: Path, km: KeyMaterial, pool: MaskPool) -> None:
    """Two secure rounds with the next round prefetched between them: no mask, in any form, on disk."""
    root = tmp_path / "node-0"
    crypter = JoyeLibertCrypter(pool=pool)
    node = FakeNode(settings=NodeSettings(node_id="node-0", root=root), crypter=crypter)  # type: ignore[arg-type]
    key, bp = records(km, 0)
    node.secagg_keys.server_keys["sk"] = key
    node.secagg_keys.biprimes["bp"] = bp
    params = {"w": np.zeros(N_VALUES).tolist()}

    def claimed(secagg_id: str) -> tuple[int, ...]:
        return tuple(r for s, r in node.secagg_keys.claimed if s == secagg_id)

    uploads: list[Any] = []
    for round_number in (1, 2):
        reply = run_round(
            node.request(plan=plan, params=params, round=round_number, **SECAGG), node.ports, node.settings
        )
        assert reply.success, reply.error
        uploads.append(loads(node.exchange.uploads[reply.params_url]).unwrap())
        crypter.prefetch_after_reply(claimed_rounds=claimed)
        if round_number == 1:
            wait_until_computed(pool, key.key, km.biprime, 2, n_masks(km))
            scan_for_masks(root, key.key, km.biprime, 2)
    wait_until_computed(pool, key.key, km.biprime, 3, n_masks(km))
    for round_number in (1, 2, 3):
        scan_for_masks(root, key.key, km.biprime, round_number)
    assert all(u["encrypted"] for u in uploads)


def scan_for_masks(root: Path, key: int, biprime: int, round_number: int) -> None:
    """No file under ``root`` holds a mask of the round (or its residue) as bytes, decimal or hex."""
    width = (2 * biprime.bit_length() + 7) // 8
    needles: list[bytes] = []
    for m, r in masks(0, 3, round_number, key, biprime):
        for v, size in ((m, width), (r, width // 2)):
            needles += [v.to_bytes(size, "big"), v.to_bytes(size, "little"), str(v)[:60].encode()]
            needles += [f"{v:x}"[:60].encode(), f"{v:X}"[:60].encode()]
    files = [p for p in root.rglob("*") if p.is_file()]
    for path in files:
        data = path.read_bytes()
        assert not any(n in data for n in needles), path.name
