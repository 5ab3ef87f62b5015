"""Codec throughput: encode+decode of model parameters vs raw ``tobytes`` + ``frombuffer().copy()``.

Prints, per model size, the ratio raw_time / codec_time (1.0 = as fast as the raw copy; the
target is >= 0.8) for fedpipe's codec and for the reference's approach (msgpack's packer with a
``tobytes`` default hook, a copy on decode), in float32 and bfloat16. CPU time of this process by
default (``--wall`` for wall time). Three regimes:

- cold (default): the round trips take turns one call at a time, and before each call the CPU
  caches are flushed (a buffer of twice the last-level cache is read and written), as a round's
  training leaves them before the node encodes or decodes its payload: code and data are fetched
  from memory, which is where a codec's per-layer Python work costs most;
- ``--warm``: the same turns without the flush: each call meets the caches as the other two
  contenders left them;
- ``--hot``: each round trip runs in bursts of calls with glibc told to keep freed memory, so
  every call after the first reuses warm memory and takes no page fault: CPU work alone.

    python benchmarks/codec.py                  # 1M, 10M and 50M parameters, cold
    python benchmarks/codec.py --warm           # the same, warm (or --hot)
    python benchmarks/codec.py --sizes 1000000  # one size
"""

import argparse
import ctypes
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


def pin_allocator() -> bool:
    """Keep freed memory in this process (glibc ``mallopt``): no call then pays page faults for
    memory that an earlier call gave back to the kernel.

    Without this, whether a round trip at 1M parameters takes page faults on all of its 8 MB
    depends on what ran before it (glibc adapts its mmap threshold to past frees), and at ~4 us a
    fault on this VM the faults outweigh the codec: every contender then measures about the same.
    Pinned, each is timed on its CPU work alone, which is the harder comparison for a codec
    written in Python. Returns False where glibc is not the allocator."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    big = 1 << 30
    return bool(mallopt(m_trim_threshold, big)) and bool(mallopt(m_mmap_threshold, big))


def flush_size() -> int:
    """Twice the last-level cache of this machine (64 MiB where sysfs does not say)."""
    caches = sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"))
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        text = caches[-1].read_text().strip()
        size = int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    except (IndexError, OSError, ValueError):
        return 64 << 20
    return max(2 * size, 8 << 20)


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


def best_times(fns: list[Callable[[Any], Any]], obj: Any, turns: int, burst: int, flush: int) -> list[float]:
    """The best time (``CLOCK``) of each function over ``turns`` turns of ``burst`` calls.

    The functions take turns so that none is favoured by the load of this shared machine at one
    moment. With ``burst`` 1 each call meets the allocator as the other functions left it; with
    larger bursts (hot) the calls after the first of a burst reuse their own freed memory.
    ``flush`` bytes of other memory are read and written before each burst (0: none). The
    garbage collector is run before each burst and kept off during it (a round trip makes no
    reference cycles)."""
    for fn in fns:
        fn(obj)  # warm up
    # what exists now (torch, the model) is left out of collections: one over all of torch's
    # objects takes ~0.15 s here, and would flush the caches by itself
    gc.collect()
    gc.freeze()
    other = np.zeros(flush, dtype=np.uint8) if flush else None
    best = [float("inf")] * len(fns)
    for _ in range(turns):
        for i, fn in enumerate(fns):
            gc.collect()
            if other is not None:
                other += 1
            gc.disable()
            try:
                for _ in range(burst):
                    start = CLOCK()
                    result = fn(obj)
                    best[i] = min(best[i], CLOCK() - start)
                    del result
            finally:
                gc.enable()
    gc.unfreeze()
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
    parser.add_argument("--sizes", type=int, nargs="+", help="parameter counts to run instead")
    parser.add_argument("--repeat", type=int, default=9, help="turns per model size")
    parser.add_argument("--wall", action="store_true", help="time with the wall clock instead of CPU time")
    regime = parser.add_mutually_exclusive_group()
    regime.add_argument("--warm", action="store_true", help="no cache flush between calls (see above)")
    regime.add_argument("--hot", action="store_true", help="bursts of calls on warm memory (see above)")
    args = parser.parse_args()
    pinned = args.hot and pin_allocator()
    flush = 0 if args.warm or args.hot else flush_size()
    global CLOCK
    if args.wall:
        CLOCK = time.perf_counter
    sizes = [100_000, 1_000_000, 5_000_000] if args.quick else [1_000_000, 10_000_000, 50_000_000]
    sizes = args.sizes or sizes
    print(
        f"{'dtype':<9} {'params':>11} {'raw ms':>8} {'fedpipe ms':>11} {'ref ms':>8} {'fedpipe ratio':>14} {'ref ratio':>10}"
    )
    for dtype in (torch.float32, torch.bfloat16):
        for n in sizes:
            obj = model(n, dtype)
            check(obj)
            if args.hot:
                turns = max(2, args.repeat if n <= 10_000_000 else args.repeat // 2)
                burst = 10 if n <= 2_000_000 else 3 if n <= 10_000_000 else 2
            else:  # many turns where a call takes about a millisecond, a few where it takes seconds
                turns = args.repeat * (10 if n <= 2_000_000 else 1)
                turns = max(2, turns if n <= 10_000_000 else args.repeat // 2)
                burst = 1
            fns = [raw_roundtrip, fedpipe_roundtrip, reference_roundtrip]
            raw, ours, ref = best_times(fns, obj, turns, burst, flush)
            name = str(dtype).removeprefix("torch.")
            print(
                f"{name:<9} {n:>11,} {raw * 1e3:>8.1f} {ours * 1e3:>11.1f} {ref * 1e3:>8.1f}"
                f" {raw / ours:>14.2f} {raw / ref:>10.2f}"
            )
            del obj
    clock = "wall" if args.wall else "CPU (user+sys)"
    if args.hot:
        regime = "hot (bursts, freed memory kept)"
    elif args.warm:
        regime = "warm (one call a turn)"
    else:
        regime = f"cold (one call a turn, {flush >> 20} MiB flushed before each)"
    print(f"ratio = raw tobytes+frombuffer().copy() time / codec time, {clock} time, best of turns, {regime}")
    if args.hot and not pinned:
        print("(glibc's mallopt was not available: the allocator was left as it is)")
    print("(higher is better; target >= 0.8; 'ref' is msgpack with tobytes hooks and a copy on decode)")


if __name__ == "__main__":
    main()
