"""Split a CSV dataset into seeded shards with the same header (stdlib only, any interpreter)."""

import argparse
import csv
import json
import random
import statistics
import sys
from pathlib import Path

SHIPPED_CSV = Path(__file__).resolve().parents[2] / "fedpipe" / "data" / "breast_cancer.csv"


def write_shards(source: Path, out: Path, n: int, seed: int) -> list[Path]:
    """Write ``n`` shard CSVs of ``source`` under ``out``; return their paths.

    The rows are shuffled with ``random.Random(seed)`` and dealt into ``n`` contiguous parts whose
    sizes differ by at most one (the larger parts last); every shard keeps the source's header
    line, so each is a dataset of the same columns. The same source, ``n`` and seed give the same
    files byte for byte. ``n`` must be at least 1 and at most the number of rows.
    """
    with source.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = [row for row in reader if row]
    if not 1 <= n <= len(rows):
        raise ValueError(f"cannot cut {len(rows)} rows into {n} shards")
    random.Random(seed).shuffle(rows)
    out.mkdir(parents=True, exist_ok=True)
    base, extra = divmod(len(rows), n)
    paths = []
    start = 0
    for index in range(n):
        # The remainder goes to the last shards so that shard sizes never decrease.
        size = base + (1 if index >= n - extra else 0)
        path = out / f"shard{index + 1}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows[start : start + size])
        paths.append(path)
        start += size
    return paths


def feature_stats(source: Path, target: str = "diagnosis") -> tuple[list[float], list[float]]:
    """Per-column mean and population standard deviation of every column but ``target``.

    The columns keep the file's order; a column of constant value gets a deviation of 1.0 so that
    standardising by it never divides by zero.
    """
    with source.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        columns = [index for index, name in enumerate(header) if name != target]
        values: list[list[float]] = [[] for _ in columns]
        for row in reader:
            if row:
                for slot, index in enumerate(columns):
                    values[slot].append(float(row[index]))
    means = [statistics.fmean(column) for column in values]
    stds = [statistics.pstdev(column) or 1.0 for column in values]
    return means, stds


def main(argv: list[str] | None = None) -> int:
    """Command line: ``shards.py --csv FILE --out DIR --n 2 --seed 0``; prints one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--csv", type=Path, default=SHIPPED_CSV)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        paths = write_shards(args.csv, args.out, args.n, args.seed)
    except (OSError, ValueError, StopIteration) as exc:
        print(f"shards: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    rows = [sum(1 for _ in path.open()) - 1 for path in paths]
    print(json.dumps({"shards": [str(path) for path in paths], "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
