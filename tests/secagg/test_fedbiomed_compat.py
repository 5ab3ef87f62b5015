"""Cross-checks against Fed-BioMed's own secagg code (skipped unless its source is at hand).

Fed-BioMed is never installed: set ``FEDPIPE_FEDBIOMED_SRC`` to an unpacked wheel
(``pip download --no-deps fedbiomed==6.4.1`` then unzip); the few pure modules needed are
loaded by path with stubs for logging and exceptions.
"""

import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any

import gmpy2
import numpy as np
import pytest

from fedpipe.ports import Biprime, ServerKeyShare
from fedpipe.secagg import (
    Encoding,
    JoyeLibertCrypter,
    MaskPool,
    decrypt_sums,
    make_key_material,
    weighted_mean,
)
from fedpipe.secagg.jl import fdh, masks, protect, tau
from fedpipe.secagg.pack import pack
from fedpipe.secagg.quantize import step_size

SRC = os.environ.get("FEDPIPE_FEDBIOMED_SRC")
pytestmark = pytest.mark.skipif(not SRC, reason="FEDPIPE_FEDBIOMED_SRC not set")


def _load(root: str) -> tuple[Any, Any]:
    def stub(name: str, **attrs: Any) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        m.__path__ = []  # type: ignore[attr-defined]
        sys.modules[name] = m
        return m

    def mod(name: str, path: str) -> Any:
        spec = importlib.util.spec_from_file_location(name, Path(root) / path)
        assert spec is not None
        assert spec.loader is not None
        m = importlib.util.module_from_spec(spec)
        sys.modules[name] = m
        spec.loader.exec_module(m)
        return m

    class _Silent:
        def __getattr__(self, _: str) -> Any:
            return lambda *a, **k: None

    stub("fedbiomed", __version__="6.4.1")
    stub("fedbiomed.common")
    stub("fedbiomed.common.exceptions", FedbiomedError=Exception, FedbiomedSecaggCrypterError=ValueError)
    stub("fedbiomed.common.logger", logger=_Silent())
    stub("fedbiomed.common.utils._config_utils", SHARE_DIR="/nonexistent")
    utils_pkg = stub("fedbiomed.common.utils")
    mod("fedbiomed.common.constants", "fedbiomed/common/constants.py")
    utils = mod("fedbiomed.common.utils._secagg_utils", "fedbiomed/common/utils/_secagg_utils.py")
    for n in ("quantize", "reverse_quantize", "multiply", "divide"):
        setattr(utils_pkg, n, getattr(utils, n))
    stub("fedbiomed.common.secagg")
    stub("fedbiomed.common.secagg._lom", LOM=object)
    jls = mod("fedbiomed.common.secagg._jls", "fedbiomed/common/secagg/_jls.py")
    crypter = mod("fedbiomed.common.secagg._secagg_crypter", "fedbiomed/common/secagg/_secagg_crypter.py")
    return jls, crypter


@pytest.fixture(scope="module")
def fb() -> tuple[Any, Any]:
    assert SRC
    return _load(SRC)


@pytest.mark.parametrize("bits", [1024, 2048])
def test_hash_and_tau_match_fedbiomed(fb: tuple[Any, Any], bits: int) -> None:
    jls, crypter = fb
    km = make_key_material(2, bits=bits)
    param = crypter.SecaggCrypter._setup_public_param(km.biprime)
    key = jls.UserKey(param, km.node_keys[0])
    fb_taus = key._populate_tau(tau=5, len_=4)  # already hashed
    assert [int(h) for h in fb_taus] == [fdh(tau(j, 5), km.biprime) for j in range(4)]
    fb_cipher = key.encrypt([gmpy2.mpz(7), gmpy2.mpz(0), gmpy2.mpz(123)], 5)
    ours = protect([7, 0, 123], masks(0, 3, 5, km.node_keys[0], km.biprime), km.biprime)
    assert [int(c) for c in fb_cipher] == ours


def test_packing_matches_fedbiomed(fb: tuple[Any, Any]) -> None:
    jls, _ = fb
    enc = Encoding(checksum=False)
    rng = np.random.default_rng(0)
    for n_nodes in (1, 2, 3, 4, 7):
        e = enc.slot_bits(n_nodes)
        values = rng.integers(0, 2**30, size=200, dtype=np.uint64)
        ves = jls.VES(ptsize=1024, valuesize=30)
        assert ves._get_elements_size_and_compression_ratio(n_nodes) == (e, enc.slots(n_nodes, 1 << 2047))
        assert [int(x) for x in ves.encode([int(v) for v in values], n_nodes)] == pack(
            values, e, enc.slots(n_nodes, 1 << 2047)
        )


def _records(km: Any, i: int) -> tuple[ServerKeyShare, Biprime]:
    parties = ("researcher", *(f"node-{k}" for k in range(km.n_nodes)))
    return km.node_records(i, secagg_id="sk", biprime_id="bp", job_id="job", parties=parties)


@pytest.mark.parametrize(("bits", "n_nodes"), [(1024, 3), (2048, 2)])
def test_fedbiomed_researcher_decrypts_fedpipe_nodes(fb: tuple[Any, Any], bits: int, n_nodes: int) -> None:
    _, crypter = fb
    km = make_key_material(n_nodes, bits=bits)
    rng = np.random.default_rng(1)
    values = rng.uniform(-3, 3, size=(n_nodes, 150))
    sizes = [int(s) for s in rng.integers(1, 5000, size=n_nodes)]
    ours = JoyeLibertCrypter(pool=MaskPool(workers=0))  # checksum slot on: Fed-BioMed ignores it
    cipher = []
    for i in range(n_nodes):
        key, bp = _records(km, i)
        cipher.append(
            ours.encrypt(
                list(values[i]), key=key, biprime=bp, round_number=4, weight=sizes[i], clipping_range=None
            ).unwrap()
        )
    mean = crypter.SecaggCrypter().aggregate(
        current_round=4,
        num_nodes=n_nodes,
        params=cipher,
        key=km.server_key,
        biprime=km.biprime,
        total_sample_size=sum(sizes),
        num_expected_params=150,
    )
    truth = np.average(values, axis=0, weights=sizes)
    # half a step from fedpipe's rounding, one more from Fed-BioMed's uint64 cast of the mean level
    assert np.max(np.abs(np.asarray(mean) - truth)) <= 1.5 * step_size(3, 2**13) + 1e-9


def test_fedpipe_decrypts_fedbiomed_nodes(fb: tuple[Any, Any]) -> None:
    _, crypter = fb
    km = make_key_material(3, bits=2048)
    rng = np.random.default_rng(2)
    values = rng.uniform(-3, 3, size=(3, 70))
    sizes = [17, 400, 3]
    cipher = [
        crypter.SecaggCrypter().encrypt(
            num_nodes=3,
            current_round=9,
            params=[float(v) for v in values[i]],
            key=km.node_keys[i],
            biprime=km.biprime,
            weight=sizes[i],
        )
        for i in range(3)
    ]
    sums = decrypt_sums(
        cipher,
        server_key=km.server_key,
        biprime=km.biprime,
        round_number=9,
        n_values=70,
        n_nodes=3,
        encoding=Encoding(checksum=False),
        total_weight=sum(sizes),
    ).unwrap()
    mean = weighted_mean(sums, sum(sizes))
    truth = np.average(values, axis=0, weights=sizes)
    assert np.max(np.abs(mean - truth)) <= step_size(3, 2**13) + 1e-9  # Fed-BioMed truncates: one step
