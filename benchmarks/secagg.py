"""Secure-aggregation benchmark: mask precomputation, encryption, dense mode, decryption, round overhead.

One run, ``--params`` values (1M by default), 3 nodes, for each ``--bits`` size of N (2048 and 1024):

(a) encryption latency after training, masks precomputed (crypter call, and the encrypt_update step);
(b) total CPU time of one node's masks vs the limit = number of modular exponentiations x the time of
    one, measured in this process (and the wall-clock parallel efficiency over the workers);
(c) the speedup of the dense packing (fedpipe only) over the compatible one;
(d) researcher decryption time (server masks computed on demand on all workers, then product,
    unmasking, checks and unpacking);
(e) the wall time a secure round adds over the plain round, training simulated by a sleep of
    ``--train`` seconds (30 and 5) in a fake plan, on a FakeNode with the real crypter.

To save time, nodes 2 and 3 use 256-bit key shares (node 1 and the server key keep full size,
2 * bits(N) - 8 bits), so (a), (b) and (d) are measured at full cost. ``--quick`` runs 20k values.
Usage: ``python benchmarks/secagg.py [--quick] [--params N] [--bits 2048 1024] [--train 30 5]``.
"""

import argparse
import os
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedpipe.args import Metric, TrainingArgs
from fedpipe.plan import DatasetRecord, DataSplit, MetricSink
from fedpipe.ports import Biprime, ServerKeyShare
from fedpipe.runner import execute_round
from fedpipe.secagg import (
    Encoding,
    JoyeLibertCrypter,
    KeyMaterial,
    MaskPool,
    PackingMode,
    decrypt_sums,
    make_biprime,
    weighted_mean,
)
from fedpipe.secagg.jl import masks
from fedpipe.secagg.quantize import step_size
from fedpipe.settings import GpuPolicy, NodeSettings
from fedpipe.testing import FakeNode

ROUND = 1


def key_material(bits: int) -> KeyMaterial:
    rng = np.random.default_rng(bits)
    full = int.from_bytes(rng.bytes((2 * bits - 8) // 8), "big") | (1 << (2 * bits - 9))
    short = [int.from_bytes(rng.bytes(32), "big") for _ in range(2)]
    keys = (full, *short)
    return KeyMaterial(biprime=make_biprime(bits), node_keys=keys, server_key=-sum(keys))


def records(km: KeyMaterial, i: int) -> tuple[ServerKeyShare, Biprime]:
    parties = ("researcher", "node-0", "node-1", "node-2")
    return km.node_records(i, secagg_id=f"sk{i}", biprime_id="bp", job_id="job-1", parties=parties)


def time_of_one_mask(key: int, n: int) -> float:
    """CPU seconds of one mask (hash + modular exponentiation): the best of 7 runs of 6, on a busy machine."""
    runs = []
    for r in range(7):
        t0 = time.process_time()
        masks(0, 6, 1000 + r, key, n)
        runs.append((time.process_time() - t0) / 6)
    return min(runs)


def bench_mode(
    km: KeyMaterial, mode: PackingMode, values: np.ndarray, sizes: list[int], pool: MaskPool
) -> dict[str, Any]:
    n = km.biprime
    enc = Encoding(mode=mode)
    out: dict[str, Any] = {}
    ciphers = []
    for i in range(3):
        key, bp = records(km, i)
        crypter = JoyeLibertCrypter(encoding=enc, pool=pool)
        count = enc.ciphertexts(values.shape[1], 3, n) + 1
        t0 = time.perf_counter()
        crypter.start_masks(key=key, biprime=bp, round_number=ROUND, n_values=values.shape[1])
        pool.get(key.key, n, ROUND, 0, count)  # wait for the precomputation to finish
        wall = time.perf_counter() - t0
        as_list = values[i].tolist()
        t0 = time.perf_counter()
        cipher = crypter.encrypt(
            as_list, key=key, biprime=bp, round_number=ROUND, weight=sizes[i], clipping_range=None
        )
        factor = crypter.encrypt(
            [0.25],
            key=key,
            biprime=bp,
            round_number=ROUND,
            weight=sizes[i],
            clipping_range=None,
            first_index=len(cipher.unwrap()),
        )
        latency = time.perf_counter() - t0
        assert factor.unwrap()
        ciphers.append(cipher.unwrap())
        if i == 0:
            stats = pool.stats(key.key, n, ROUND)
            assert stats is not None
            out.update(masks=count, mask_wall=wall, mask_cpu=stats.cpu_seconds, encrypt=latency)
        pool.forget(key.key, n, ROUND)
    t0 = time.perf_counter()
    sums = decrypt_sums(
        ciphers,
        server_key=km.server_key,
        biprime=n,
        round_number=ROUND,
        n_values=values.shape[1],
        n_nodes=3,
        encoding=enc,
        total_weight=sum(sizes),
        pool=pool,
    ).unwrap()
    out["decrypt"] = time.perf_counter() - t0
    pool.forget(km.server_key, n, ROUND)
    err = float(
        np.max(np.abs(weighted_mean(sums, sum(sizes), None, enc) - np.average(values, axis=0, weights=sizes)))
    )
    assert err <= step_size(3, 2**13) / 2 + 1e-9, err
    out["ciphertexts"] = len(ciphers[0])
    return out


def bench_node(km: KeyMaterial, values: np.ndarray, sizes: list[int], pool: MaskPool) -> dict[str, Any]:
    """(a) and (b) only: node 1's masks and encryption in the compatible mode."""
    n, enc = km.biprime, Encoding()
    key, bp = records(km, 0)
    crypter = JoyeLibertCrypter(encoding=enc, pool=pool)
    count = enc.ciphertexts(values.shape[1], 3, n) + 1
    t0 = time.perf_counter()
    crypter.start_masks(key=key, biprime=bp, round_number=ROUND, n_values=values.shape[1])
    pool.get(key.key, n, ROUND, 0, count)
    wall = time.perf_counter() - t0
    as_list = values[0].tolist()
    t0 = time.perf_counter()
    cipher = crypter.encrypt(
        as_list, key=key, biprime=bp, round_number=ROUND, weight=sizes[0], clipping_range=None
    )
    crypter.encrypt(
        [0.25],
        key=key,
        biprime=bp,
        round_number=ROUND,
        weight=sizes[0],
        clipping_range=None,
        first_index=len(cipher.unwrap()),
    )
    latency = time.perf_counter() - t0
    stats = pool.stats(key.key, n, ROUND)
    assert stats is not None
    pool.forget(key.key, n, ROUND)
    return {"masks": count, "mask_wall": wall, "mask_cpu": stats.cpu_seconds, "encrypt": latency}


class SleepPlan:
    """A fake plan: parameters of a given size, training simulated by a sleep."""

    def __init__(self, n_params: int, seconds: float) -> None:
        self.w = np.zeros(n_params, dtype=np.float32)
        self.seconds = seconds

    def post_init(self, *, model_args: Any, training_args: TrainingArgs, aggregator_args: Any) -> None:
        pass

    def load_state(self, state: Any) -> list[str]:
        return []

    def set_model_params(self, params: Any) -> None:
        self.w = np.asarray(params["w"], dtype=np.float32).copy()

    def set_aux_vars(self, aux_vars: Any) -> None:
        pass

    def load_data(self, dataset: DatasetRecord) -> int:
        return 1000

    def set_split(self, split: DataSplit) -> None:
        pass

    def testing_routine(
        self, *, metric: Metric | None, metric_args: Any, report: MetricSink, before_train: bool
    ) -> dict[str, float]:
        return {}

    def training_routine(self, *, report: MetricSink, gpu: GpuPolicy) -> int:
        time.sleep(self.seconds)
        self.w = self.w + np.float32(0.01)
        return 1000

    def collect_aux_vars(self) -> dict[str, Any]:
        return {}

    def after_training_params(self, *, flatten: bool) -> Any:
        return self.w.astype(np.float64).tolist() if flatten else {"w": self.w}

    def save_state(self) -> dict[str, Any]:
        return {}

    def optimizer_args(self) -> dict[str, Any]:
        return {}


class RealClock:
    def perf_counter(self) -> float:
        return time.perf_counter()

    def process_time(self) -> float:
        return time.process_time()


def bench_round(
    km: KeyMaterial, n_params: int, train: float, pool: MaskPool, root: Path, round_number: int
) -> dict[str, float]:
    def run(secure: bool) -> tuple[float, float]:
        node = FakeNode(
            settings=NodeSettings(node_id="node-0", root=root / f"{secure}{train}"),
            clock=RealClock(),
            crypter=JoyeLibertCrypter(pool=pool),
        )  # type: ignore[arg-type]
        key, bp = records(km, 0)
        node.secagg_keys.server_keys[key.secagg_id] = key
        node.secagg_keys.biprimes["bp"] = bp
        fields = (
            {"secagg_servkey_id": key.secagg_id, "secagg_biprime_id": "bp", "secagg_random": 0.25}
            if secure
            else {}
        )
        request = node.request(
            plan=lambda: SleepPlan(n_params, train),
            params={"w": np.zeros(n_params, dtype=np.float32)},
            round=round_number,
            training_args={"epochs": 1, "loader_args": {"batch_size": 4}, "test_ratio": 0.0},
            **fields,
        )
        t0 = time.perf_counter()
        run_ = execute_round(request, node.ports, node.settings)
        wall = time.perf_counter() - t0
        assert run_.reply.success, run_.reply.error
        step = dict(run_.step_seconds).get("encrypt_update", 0.0)
        return wall, step

    plain, _ = run(False)
    secure, encrypt_step = run(True)
    return {"plain": plain, "secure": secure, "added": secure - plain, "encrypt_step": encrypt_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k values, training of 4 s and 1 s")
    parser.add_argument("--params", type=int, default=None)
    parser.add_argument("--bits", type=int, nargs="+", default=[2048, 1024])
    parser.add_argument(
        "--train", type=float, nargs="*", default=None, help="simulated training seconds for (e)"
    )
    parser.add_argument("--workers", type=int, default=None, help="mask workers (default: every core)")
    parser.add_argument(
        "--round-bits", type=int, nargs="*", default=None, help="bit sizes to run (e) for (default: all)"
    )
    parser.add_argument("--nice", type=int, default=0, help="worker priority decrement (nodes default to 10)")
    parser.add_argument(
        "--only-node", action="store_true", help="only (a) and (b): one node, compatible mode"
    )
    args = parser.parse_args()
    n_params = args.params or (20_000 if args.quick else 1_000_000)
    trains = args.train if args.train is not None else ([4.0, 1.0] if args.quick else [30.0, 5.0])
    round_bits = args.round_bits if args.round_bits is not None else args.bits
    pool = MaskPool(workers=args.workers, chunk=64, nice=args.nice)
    pool.warm_up()
    rng = np.random.default_rng(0)
    values = rng.uniform(-1, 1, size=(3, n_params))
    sizes = [1000, 2500, 4000]
    print(
        f"secagg benchmark: {n_params} values, 3 nodes, {pool.n_workers} mask workers on {os.cpu_count()} cores"
    )
    for bits in args.bits:
        km = key_material(bits)
        t_one = time_of_one_mask(km.node_keys[0], km.biprime)
        if args.only_node:
            c = bench_node(km, values, sizes, pool)
            limit = c["masks"] * t_one
            print(
                f"\nN of {bits} bits: one mask (hash + powmod, {2 * bits - 8}-bit key) = {t_one * 1e3:.2f} ms"
            )
            print(
                f"(a) encryption latency, masks precomputed: compatible {c['encrypt']:.3f} s (target < 1 s)"
            )
            print(
                f"(b) masks of one node: {c['masks']} exps, limit {limit:.1f} s CPU; CPU spent {c['mask_cpu']:.1f} s "
                f"= {c['mask_cpu'] / limit:.3f}x (target <= 1.15x); wall {c['mask_wall']:.1f} s x {pool.n_workers} "
                f"workers = {c['mask_wall'] * pool.n_workers / limit:.3f}x"
            )
            continue
        res = {m: bench_mode(km, m, values, sizes, pool) for m in (PackingMode.COMPATIBLE, PackingMode.DENSE)}
        c, d = res[PackingMode.COMPATIBLE], res[PackingMode.DENSE]
        limit = c["masks"] * t_one
        print(f"\nN of {bits} bits: one mask (hash + powmod, {2 * bits - 8}-bit key) = {t_one * 1e3:.2f} ms")
        print(
            f"(a) encryption latency, masks precomputed:  compatible {c['encrypt']:.3f} s   dense {d['encrypt']:.3f} s   (target < 1 s)"
        )
        print(
            f"(b) masks of one node: {c['masks']} exps, limit {limit:.1f} s CPU; CPU spent {c['mask_cpu']:.1f} s "
            f"= {c['mask_cpu'] / limit:.3f}x (target <= 1.15x); wall {c['mask_wall']:.1f} s x {pool.n_workers} workers "
            f"= {c['mask_wall'] * pool.n_workers / limit:.3f}x"
        )
        print(
            f"(c) dense mode: {c['ciphertexts']} -> {d['ciphertexts']} ciphertexts; mask wall {c['mask_wall']:.1f} -> "
            f"{d['mask_wall']:.1f} s = {c['mask_wall'] / d['mask_wall']:.2f}x; decryption {c['decrypt'] / d['decrypt']:.2f}x"
        )
        print(
            f"(d) researcher decryption (3 nodes, server masks on demand): compatible {c['decrypt']:.1f} s   dense {d['decrypt']:.1f} s"
        )
        if bits in round_bits:
            with TemporaryDirectory() as tmp:
                for i, train in enumerate(trains):
                    r = bench_round(km, n_params, train, pool, Path(tmp), 10 + i)
                    print(
                        f"(e) training {train:g} s: plain round {r['plain']:.1f} s, secure round {r['secure']:.1f} s, "
                        f"added {r['added']:.1f} s (encrypt_update step {r['encrypt_step']:.2f} s)"
                    )
        else:
            per_mask_wall = c["mask_wall"] / c["masks"]
            for train in trains:
                est = max(0.0, per_mask_wall * c["masks"] - train) + c["encrypt"]
                print(
                    f"(e) training {train:g} s: estimated added wall {est:.1f} s (masks {c['mask_wall']:.1f} s in parallel)"
                )
    pool.close()


if __name__ == "__main__":
    main()
