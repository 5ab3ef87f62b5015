"""Codec throughput: encode+decode of model parameters vs raw ``tobytes`` + ``frombuffer().copy()``.

Prints, per model size (CPU time by default, ``--wall`` for wall time), the ratio raw_time / codec_time (1.0 = as fast as the raw copy; the
target is >= 0.8) for fedpipe's codec and for the reference's approach (msgpack's packer with a
``tobytes`` default hook, a copy on decode), in float32 and bfloat16. Run:

    python benchmarks/codec.py            # 1M, 10M and 50M parameters
    python benchmarks/codec.py --quick    # 100k, 1M and 5M parameters
"""

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedpipe.codec import dumps, loads

LAYERS = 8
# CPU time of this process (user + system, page faults included): on a shared machine, wall time
# also counts the moments another process holds the core. ``--wall`` switches to wall time.
CLOCK = time.process_time


def model(n_params: int, dtype: torch.dtype) -> dict[str, Any]:
    """A state dict of ``n_params`` parameters over a few layers, plus round metadata."""
    per = n_params // LAYERS
    weights = {f"layer{i}.weight": torch.randn(per, dtype=torch.float32).to(dtype) for i in range(LAYERS - 1)}
    weights["head.weight"] = torch.randn(n_params - per * (LAYERS - 1)).to(dtype)
    return {"model_weights": weights, "node_id": "n1", "sample_size": 1234, "optimizer_args": {"lr": 0.01}}


def raw_roundtrip(obj: dict[str, Any]) -> Any:
    """Every tensor to bytes (all held at once, as in a payload file), then every one back."""
    blobs = []
    for name, t in obj["model_weights"].items():
        arr = t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()
        blobs.append((name, t.dtype, arr.dtype, arr.tobytes()))
    out = {}
    for name, dtype, np_dtype, data in blobs:
        restored = torch.from_numpy(np.frombuffer(data, dtype=np_dtype).copy())
        out[name] = restored.view(torch.bfloat16) if dtype == torch.bfloat16 else restored
    return out


def _ref_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        arr = obj.view(torch.int16).numpy() if obj.dtype == torch.bfloat16 else obj.cpu().numpy()
        return {"__type__": "torch.Tensor", "value": [arr.tobytes(), arr.dtype.name, list(arr.shape)]}
    if isinstance(obj, np.ndarray):
        return {"__type__": "np.ndarray", "value": [obj.tobytes(), obj.dtype.name, list(obj.shape)]}
    raise TypeError(type(obj))


def _ref_hook(obj: dict[Any, Any]) -> Any:
    if obj.get("__type__") == "torch.Tensor":
        data, dtype, shape = obj["value"]
        return torch.from_numpy(np.frombuffer(data, dtype=dtype).reshape(shape).copy())
    return obj


def reference_roundtrip(obj: dict[str, Any]) -> Any:
    data = msgpack.packb(obj, default=_ref_default, strict_types=True, use_bin_type=True)
    return msgpack.unpackb(data, object_hook=_ref_hook, strict_map_key=False)


def fedpipe_roundtrip(obj: dict[str, Any]) -> Any:
    return loads(dumps(obj)).unwrap()


def best_times(fns: list[Callable[[Any], Any]], obj: Any, repeat: int) -> list[float]:
    """The best wall time of each function, the functions taking turns so that none is favoured
    by the allocator's state or by the load of this shared machine at one moment."""
    for fn in fns:
        fn(obj)  # warm up
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            gc.collect()
            gc.disable()
            start = CLOCK()
            result = fn(obj)
            best[i] = min(best[i], CLOCK() - start)
            gc.enable()
            del result
    return best


def check(obj: dict[str, Any]) -> None:
    back = fedpipe_roundtrip(obj)["model_weights"]
    for name, t in obj["model_weights"].items():
        assert torch.equal(back[name], t), name


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller models")
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--wall", action="store_true", help="time with the wall clock instead of CPU time")
    args = parser.parse_args()
    global CLOCK
    if args.wall:
        CLOCK = time.perf_counter
    sizes = [100_000, 1_000_000, 5_000_000] if args.quick else [1_000_000, 10_000_000, 50_000_000]
    print(
        f"{'dtype':<9} {'params':>11} {'raw ms':>8} {'fedpipe ms':>11} {'ref ms':>8} {'fedpipe ratio':>14} {'ref ratio':>10}"
    )
    for dtype in (torch.float32, torch.bfloat16):
        for n in sizes:
            obj = model(n, dtype)
            check(obj)
            repeat = max(2, args.repeat if n <= 10_000_000 else args.repeat // 2)
            raw, ours, ref = best_times([raw_roundtrip, fedpipe_roundtrip, reference_roundtrip], obj, repeat)
            name = str(dtype).removeprefix("torch.")
            print(
                f"{name:<9} {n:>11,} {raw * 1e3:>8.1f} {ours * 1e3:>11.1f} {ref * 1e3:>8.1f}"
                f" {raw / ours:>14.2f} {raw / ref:>10.2f}"
            )
            del obj
    clock = "wall" if args.wall else "CPU (user+sys)"
    print(f"ratio = raw tobytes+frombuffer().copy() time / codec time, {clock} time, best of turns")
    print("(higher is better; target >= 0.8; 'ref' is msgpack with tobytes hooks and a copy on decode)")


if __name__ == "__main__":
    main()
