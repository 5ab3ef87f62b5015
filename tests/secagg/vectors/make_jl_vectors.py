"""Make ``jl_vectors.json``: stock Fed-BioMed 6.4.1 node replies and what 6.4.1's researcher makes of them.

    /work/main/.fbm-env/bin/python tests/secagg/vectors/make_jl_vectors.py

Run once, by hand; everything is drawn from a fixed seed, so a rerun gives the same file. Each case
holds the replies as 6.4.1's node builds them (``node/round.py``: ``params`` the encrypted flat
weights, ``encryption_factor`` the same encryption of ``[secagg_random]``, ``sample_size``) and what
6.4.1's researcher computes from them (``SecaggCrypter.aggregate`` / ``SecaggLomCrypter.aggregate``,
the decoded integer sums for Joye-Libert, the factor it validates). Joye-Libert cases use a small
test biprime (as many values as one plaintext holds) or the package's default biprime; the LOM cases
add the two-node replies with a factor that ``lom_vectors.json`` lacks.

Fed-BioMed is imported inside ``main`` only: pytest imports this module for its doctests, without it.
"""

import json
import random
import uuid
from pathlib import Path
from typing import Any

import gmpy2

OUT = Path(__file__).with_name("jl_vectors.json")
T = 2**13
rng = random.Random(20240614)


def tricky_floats(n: int, c: float) -> list[float]:
    """Values on and beside 6.4.1's truncation thresholds, at the clip edges and beyond."""
    import numpy as np

    out: list[float] = []
    while len(out) < n:
        k = rng.randrange(T + 1)
        edge = float(k * (2 * c) / T - c)
        pick = rng.randrange(6)
        if pick == 0:
            out.append(edge)
        elif pick == 1:
            out.append(float(np.nextafter(edge, -np.inf)))
        elif pick == 2:
            out.append(float(rng.choice([-c, c, 0.0, -1.5 * c, 4.0 * c])))
        else:
            out.append(rng.uniform(-1.1 * c, 1.1 * c))
    return out


def small_biprime(bits: int) -> int:
    """A test biprime of ``bits`` bits: two primes with their two top bits set."""
    half = bits // 2
    while True:
        p = int(gmpy2.next_prime(rng.getrandbits(half) | (3 << (half - 2))))
        q = int(gmpy2.next_prime(rng.getrandbits(half) | (3 << (half - 2))))
        if p != q and (p * q).bit_length() == bits:
            return p * q


def node_ids(n: int) -> list[str]:
    return [f"NODE_{uuid.UUID(int=rng.getrandbits(128))}" for _ in range(n)]


def jl_case(
    *,
    name: str,
    n: int,
    size: int,
    tau: int,
    weights: list[int] | None,
    biprime: int,
    factor: bool,
    clipping: int | None = None,
) -> dict[str, Any]:
    from fedbiomed.common.secagg import JoyeLibert, SecaggCrypter
    from fedbiomed.common.secagg._jls import ServerKey

    c = 3 if clipping is None else clipping
    ids = node_ids(n)
    keys = [rng.getrandbits(2040) for _ in range(n)]  # 6.4.1 draws 2040-bit user keys
    server_key = -sum(keys)
    secagg_random = round(rng.uniform(0, 1), 3) if factor else None
    replies = []
    for i, node in enumerate(ids):
        weight = None if weights is None else weights[i]

        def encrypt(values: list[float], key: int = keys[i], weight: int | None = weight) -> list[int]:
            return SecaggCrypter().encrypt(
                num_nodes=n,
                current_round=tau,
                params=values,
                key=key,
                biprime=biprime,
                clipping_range=clipping,
                weight=weight,
            )

        params = tricky_floats(size, c)
        replies.append(
            {
                "node_id": node,
                "success": True,
                "encrypted": True,
                "params": encrypt(params),
                "encryption_factor": None if secagg_random is None else encrypt([secagg_random]),
                "sample_size": 1 if weight is None else weight,  # weight None encodes as weight 1
                "optim_aux_var": {},
                "clear_params": params,
            }
        )
    total = sum(r["sample_size"] for r in replies)

    def aggregate(vectors: list[list[int]], count: int) -> list[float]:
        return SecaggCrypter().aggregate(
            current_round=tau,
            num_nodes=n,
            params=vectors,
            key=server_key,
            biprime=biprime,
            total_sample_size=total,
            clipping_range=clipping,
            num_expected_params=count,
        )

    public = SecaggCrypter._setup_public_param(biprime=biprime)
    sums = JoyeLibert().aggregate(
        sk_0=ServerKey(public, server_key),
        tau=tau,
        list_y_u_tau=SecaggCrypter._convert_to_encrypted_number([r["params"] for r in replies], public),
        num_expected_params=size,
    )
    return {
        "name": name,
        "biprime": biprime,
        "node_keys": keys,
        "server_key": server_key,
        "parties": ids,
        "round": tau,
        "size": size,
        "weighted": weights is not None,
        "clipping_range": clipping,
        "secagg_random": secagg_random,
        "total_sample_size": total,
        "replies": replies,
        "sums": [int(s) for s in sums],
        "mean": aggregate([r["params"] for r in replies], size),
        "validation": None
        if secagg_random is None
        else aggregate([r["encryption_factor"] for r in replies], 1),
    }


def lom_case(
    *, name: str, n: int, size: int, tau: int, weights: list[int] | None, factor: bool
) -> dict[str, Any]:
    from fedbiomed.common.secagg import SecaggLomCrypter

    ids = node_ids(n)
    pair = {frozenset((a, b)): rng.randbytes(32) for i, a in enumerate(ids) for b in ids[i + 1 :]}
    secrets = {a: {b: pair[frozenset((a, b))] for b in ids if b != a} for a in ids}
    secagg_id = f"secagg_{uuid.UUID(int=rng.getrandbits(128))}"
    secagg_random = round(rng.uniform(0, 1), 3) if factor else None
    replies = []
    for i, node in enumerate(ids):
        weight = None if weights is None else weights[i]

        def encrypt(values: list[float], node: str = node, weight: int | None = weight) -> list[int]:
            return SecaggLomCrypter(nonce=secagg_id).encrypt(
                current_round=tau,
                node_id=node,
                params=values,
                pairwise_secrets=secrets[node],
                node_ids=ids,
                weight=weight,
            )

        params = tricky_floats(size, 3)
        replies.append(
            {
                "node_id": node,
                "success": True,
                "encrypted": True,
                "params": encrypt(params),
                "encryption_factor": None if secagg_random is None else encrypt([secagg_random]),
                "sample_size": 1 if weight is None else weight,
                "optim_aux_var": {},
                "clear_params": params,
            }
        )
    total = sum(r["sample_size"] for r in replies)
    crypter = SecaggLomCrypter()
    return {
        "name": name,
        "secagg_id": secagg_id,
        "parties": ids,
        "round": tau,
        "size": size,
        "weighted": weights is not None,
        "secagg_random": secagg_random,
        "total_sample_size": total,
        "replies": replies,
        "mean": crypter.aggregate(params=[r["params"] for r in replies], total_sample_size=total),
        "validation": None
        if secagg_random is None
        else crypter.aggregate(params=[r["encryption_factor"] for r in replies], total_sample_size=total),
    }


def main() -> None:
    import fedbiomed
    from fedbiomed.common.utils import get_default_biprime

    default = int(get_default_biprime())
    small = small_biprime(320)  # 9 slots of 32 bits fit one plaintext below N
    w = rng.randrange
    jl = [
        jl_case(
            name="jl-2-weighted",
            n=2,
            size=9,
            tau=1,
            weights=[w(1, 2**17), w(1, 500)],
            biprime=small,
            factor=True,
        ),
        jl_case(name="jl-2-unweighted", n=2, size=7, tau=0, weights=None, biprime=small, factor=False),
        jl_case(
            name="jl-3-weighted-clip2",
            n=3,
            size=9,
            tau=7,
            weights=[2**17 - 1, w(1, 999), 1],
            biprime=small,
            factor=True,
            clipping=2,
        ),
        jl_case(name="jl-3-unweighted", n=3, size=5, tau=2**20, weights=None, biprime=small, factor=True),
        jl_case(
            name="jl-3-default-biprime",
            n=3,
            size=70,
            tau=2,
            weights=[w(1, 5000) for _ in range(3)],
            biprime=default,
            factor=True,
        ),
        jl_case(
            name="jl-2-default-biprime",
            n=2,
            size=33,
            tau=0,
            weights=[w(1, 5000), w(1, 5000)],
            biprime=default,
            factor=True,
        ),
    ]
    lom = [
        lom_case(name="lom-2-weighted", n=2, size=9, tau=3, weights=[w(1, 2**17), w(1, 500)], factor=True),
        lom_case(name="lom-2-unweighted", n=2, size=7, tau=0, weights=None, factor=True),
        lom_case(
            name="lom-3-weighted", n=3, size=40, tau=12, weights=[w(1, 999) for _ in range(3)], factor=True
        ),
        lom_case(name="lom-3-unweighted", n=3, size=5, tau=1, weights=None, factor=False),
    ]
    OUT.write_text(
        json.dumps({"fedbiomed": fedbiomed.__version__, "jl": jl, "lom": lom}, separators=(",", ":")) + "\n"
    )
    print(f"{len(jl)} JL and {len(lom)} LOM cases, {OUT.stat().st_size} bytes -> {OUT}")


if __name__ == "__main__":
    main()
