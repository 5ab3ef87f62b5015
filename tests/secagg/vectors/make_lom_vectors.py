"""Make ``lom_vectors.json`` from the real Fed-BioMed 6.4.1 LOM classes (run once, by hand).

    /work/main/.fbm-env/bin/python tests/secagg/vectors/make_lom_vectors.py

Everything is drawn from a fixed seed, so a rerun gives the same file. Vectors of up to 513 values
keep their inputs and outputs in full; longer ones keep a recipe for their inputs (``shake_floats``)
and SHA-256 digests of their outputs (uint64 or float64, little-endian bytes).
"""

import hashlib
import json
import random
import uuid
from pathlib import Path
from typing import Any

import fedbiomed
import numpy as np
from fedbiomed.common.secagg import SecaggLomCrypter
from fedbiomed.common.secagg._lom import LOM

OUT = Path(__file__).with_name("lom_vectors.json")
FULL = 513  # vectors up to this length are stored in full
rng = random.Random(20240613)


def shake_floats(seed: str, n: int, scale: float) -> list[float]:
    """n floats uniform in [-scale, scale) from SHAKE-256 of the seed (the tests rebuild them)."""
    words = np.frombuffer(hashlib.shake_256(seed.encode()).digest(8 * n), dtype="<u8")
    return ((words >> np.uint64(11)).astype(np.float64) * 2.0**-53 * 2.0 * scale - scale).tolist()


def digest_u64(values: list[int]) -> str:
    return hashlib.sha256(np.array(values, dtype="<u8").tobytes()).hexdigest()


def digest_f64(values: list[float]) -> str:
    return hashlib.sha256(np.array(values, dtype="<f8").tobytes()).hexdigest()


def tricky_floats(n: int, c: float, t: int) -> list[float]:
    """Values on, just beside and between quantization thresholds, at the clip edges and beyond."""
    out: list[float] = []
    while len(out) < n:
        k = rng.randrange(t + 1)
        edge = float((k * (2 * c) / t) - c)  # where (x + c) * T / (2c) crosses k
        pick = rng.randrange(8)
        if pick == 0:
            out.append(edge)
        elif pick == 1:
            out.append(float(np.nextafter(edge, -np.inf)))
        elif pick == 2:
            out.append(float(np.nextafter(edge, np.inf)))
        elif pick == 3:
            out.append(float(rng.choice([-c, c, -0.0, 0.0, -c * 1.5, c * 4, 1e-300, -1e-300])))
        else:
            out.append(rng.uniform(-1.2 * c, 1.2 * c))
    return out[:n]


def party_ids(n: int, style: str) -> list[str]:
    if style == "uuid":
        return [f"NODE_{uuid.UUID(int=rng.getrandbits(128))}" for _ in range(n)]
    return ["b", "B", "ä", "a1", "a", "Zz"][:n]  # str order, capitals and non-ASCII


def secrets_for(parties: list[str]) -> dict[str, dict[str, bytes]]:
    pair: dict[frozenset[str], bytes] = {}
    for i, a in enumerate(parties):
        for b in parties[i + 1 :]:
            pair[frozenset((a, b))] = rng.randbytes(32)
    return {a: {b: pair[frozenset((a, b))] for b in parties if b != a} for a in parties}


def crypter_case(
    *,
    n: int,
    size: int,
    tau: int,
    weights: list[int | None],
    secagg_id: str,
    clipping: int | None = None,
    target: int | None = None,
    ids: str = "uuid",
) -> dict[str, Any]:
    parties = party_ids(n, ids)
    secrets = secrets_for(parties)
    c = 3 if clipping is None else clipping
    t = target or 2**13
    params: dict[str, list[float]] = {}
    recipe: dict[str, str] = {}
    for p in parties:
        if size <= FULL:
            params[p] = tricky_floats(size, c, t)
        else:
            seed = f"{secagg_id}/{p}/{tau}"
            recipe[p] = seed
            params[p] = shake_floats(seed, size, 1.3 * c)
    outputs = {}
    for p, w in zip(parties, weights, strict=True):
        crypter = SecaggLomCrypter(nonce=secagg_id)
        outputs[p] = crypter.encrypt(
            current_round=tau,
            node_id=p,
            params=params[p],
            pairwise_secrets=secrets[p],
            node_ids=parties,
            clipping_range=clipping,
            weight=w,
            target_range=target,
        )
    total = sum(w for w in weights if w is not None) if weights[0] is not None else n
    mean = SecaggLomCrypter().aggregate(
        params=[outputs[p] for p in parties],
        total_sample_size=total,
        clipping_range=clipping,
        target_range=target,
    )
    case: dict[str, Any] = {
        "kind": "crypter",
        "secagg_id": secagg_id,
        "parties": parties,
        "tau": tau,
        "weights": dict(zip(parties, weights, strict=True)),
        "clipping_range": clipping,
        "target_range": target,
        "size": size,
        "secrets": {p: {q: s.hex() for q, s in secrets[p].items()} for p in parties},
        "total_sample_size": total,
    }
    if size <= FULL and not recipe:
        case["params"] = params
        case["encrypted"] = outputs
        case["mean"] = mean
    else:
        case["params_recipe"] = {"seeds": recipe, "scale": 1.3 * c}
        case["params_sha256"] = {p: digest_f64(params[p]) for p in parties}
        case["encrypted_sha256"] = {p: digest_u64(outputs[p]) for p in parties}
        case["encrypted_head"] = {p: outputs[p][:4] for p in parties}
        case["mean_sha256"] = digest_f64(mean)
        case["mean_head"] = mean[:4]
    return case


def lom_case(*, n: int, size: int, tau: int, nonce: bytes, values: list[int] | None = None) -> dict[str, Any]:
    """6.4.1's bare LOM.protect: masks (values zero) or given integers; an error is recorded as such."""
    parties = party_ids(n, "uuid")
    secrets = secrets_for(parties)
    x = values if values is not None else [0] * size
    out: dict[str, Any] = {}
    error = None
    for p in parties:
        try:
            out[p] = LOM(nonce).protect(
                node_id=p, pairwise_secrets=secrets[p], tau=tau, x_u_tau=x, node_ids=parties
            )
        except Exception as e:  # recorded: our code must refuse the same input
            error = type(e).__name__
            break
    case: dict[str, Any] = {
        "kind": "lom",
        "nonce": nonce.hex(),
        "parties": parties,
        "tau": tau,
        "size": len(x),
        "values": values,
        "secrets": {p: {q: s.hex() for q, s in secrets[p].items()} for p in parties},
    }
    if error:
        case["error"] = error
    else:
        case["protected"] = out
        case["sum"] = LOM().aggregate([out[p] for p in parties])
    return case


def secagg_id() -> str:
    return f"secagg_{uuid.UUID(int=rng.getrandbits(128))}"


def main() -> None:
    w = rng.randrange
    cases = [
        crypter_case(n=2, size=1, tau=0, weights=[1, 1], secagg_id=secagg_id()),
        crypter_case(n=2, size=7, tau=1, weights=[w(1, 500), w(1, 500)], secagg_id=secagg_id(), ids="names"),
        crypter_case(n=2, size=513, tau=2, weights=[None, None], secagg_id="abc"),
        crypter_case(n=3, size=7, tau=999, weights=[w(1, 2**17), 2**17 - 1, 1], secagg_id="-x1", ids="names"),
        crypter_case(n=3, size=513, tau=5, weights=[w(1, 999), w(1, 999), w(1, 999)], secagg_id=secagg_id()),
        crypter_case(n=3, size=10_000, tau=3, weights=[60, 70, 80], secagg_id=secagg_id()),
        crypter_case(n=4, size=1, tau=2**40, weights=[0, 7, 9, 11], secagg_id="ßecagg_é_ünïcode_id"),
        crypter_case(
            n=4, size=513, tau=7, weights=[w(1, 2**16) for _ in range(4)], secagg_id=secagg_id(), clipping=1
        ),
        crypter_case(
            n=4, size=10_000, tau=11, weights=[5, 6, 7, 8], secagg_id=secagg_id(), clipping=5, ids="names"
        ),
        crypter_case(n=5, size=7, tau=4, weights=[3, 1, 4, 1, 5], secagg_id=secagg_id(), ids="names"),
        crypter_case(n=5, size=513, tau=0, weights=[w(1, 100) for _ in range(5)], secagg_id=secagg_id()),
        crypter_case(n=5, size=10_000, tau=12, weights=[10, 20, 30, 40, 50], secagg_id=secagg_id()),
        # federated analytics' window (T = 2**55, c = 1e14), unweighted: sums beyond 2**53
        crypter_case(
            n=3, size=513, tau=1, weights=[None] * 3, secagg_id=secagg_id(), clipping=10**14, target=2**55
        ),
    ]
    # the factor as 6.4.1's node makes it
    parties = party_ids(3, "uuid")
    sec = secrets_for(parties)
    sid = secagg_id()
    r = round(rng.uniform(0, 1), 3)
    weights = [120, 80, 44]
    enc = {
        p: SecaggLomCrypter(nonce=sid).encrypt(
            current_round=6, node_id=p, params=[r], pairwise_secrets=sec[p], node_ids=parties, weight=wt
        )
        for p, wt in zip(parties, weights, strict=True)
    }
    cases.append(
        {
            "kind": "crypter",
            "factor": True,
            "secagg_id": sid,
            "parties": parties,
            "tau": 6,
            "weights": dict(zip(parties, weights, strict=True)),
            "clipping_range": None,
            "target_range": None,
            "size": 1,
            "secrets": {p: {q: s.hex() for q, s in sec[p].items()} for p in parties},
            "total_sample_size": sum(weights),
            "params": {p: [r] for p in parties},
            "encrypted": enc,
            "mean": SecaggLomCrypter().aggregate(
                params=[enc[p] for p in parties], total_sample_size=sum(weights)
            ),
        }
    )
    cases += [
        lom_case(n=2, size=7, tau=0, nonce=rng.randbytes(16)),
        lom_case(n=3, size=513, tau=9, nonce=rng.randbytes(16)),
        lom_case(n=6, size=100, tau=3, nonce=rng.randbytes(16)),
        # the 32-bit block counter wraps after one block: OpenSSL carries into the next word
        lom_case(n=3, size=513, tau=1, nonce=b"\xff\xff\xff\xff" + rng.randbytes(12)),
        # ... and the 64-bit counter wraps to zero (the last 8 bytes stay)
        lom_case(n=2, size=40, tau=1, nonce=b"\xff" * 8 + rng.randbytes(8)),
        # the overflow guard: 2 parties leave 62 bits, 3 parties 61
        lom_case(n=2, size=3, tau=0, nonce=rng.randbytes(16), values=[2**62 - 1, 0, 5]),
        lom_case(n=2, size=3, tau=0, nonce=rng.randbytes(16), values=[2**62, 0, 5]),
        lom_case(n=3, size=2, tau=0, nonce=rng.randbytes(16), values=[2**61 - 1, 1]),
        lom_case(n=3, size=2, tau=0, nonce=rng.randbytes(16), values=[2**61, 1]),
    ]
    OUT.write_text(
        json.dumps({"fedbiomed": fedbiomed.__version__, "cases": cases}, separators=(",", ":")) + "\n"
    )
    print(f"{len(cases)} cases, {OUT.stat().st_size} bytes -> {OUT}")


if __name__ == "__main__":
    main()
