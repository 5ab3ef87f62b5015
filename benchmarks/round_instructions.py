"""Instructions per standard round (callgrind), a count that does not swing with the machine's load.

Run: ``python benchmarks/round_instructions.py [--tree DIR] [--rounds N]``. It runs the rounds
of ``round_overhead.py`` (fakes, a no-op plan, workspace on /dev/shm) under ``valgrind
--tool=callgrind`` for N and 3N rounds and prints the difference divided by 2N: the instructions
of one round, start-up cancelled. ``--tree`` points at another checkout (say the previous
commit) to compare the two in one run; both use this checkout's interpreter.
"""

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _loop(rounds: int) -> None:
    sys.path.insert(0, str(HERE))
    from round_overhead import NoOpPlan

    from fedpipe import NodeSettings, run_round
    from fedpipe.testing import FakeNode

    node = FakeNode(settings=NodeSettings(node_id="bench", root=tempfile.mkdtemp(dir="/dev/shm")))
    request = node.request(plan=NoOpPlan)
    for _ in range(rounds):
        run_round(request, node.ports, node.settings)


def _count(tree: Path, rounds: int) -> int:
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--loop",
            str(rounds),
        ],
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"},
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"Collected : (\d+)", out.stderr)
    if match is None:
        raise SystemExit("valgrind printed no instruction count")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--tree", type=Path, default=None, help="another checkout to compare with")
    parser.add_argument("--loop", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop is not None:
        _loop(args.loop)
        return
    trees = [HERE.parent] + ([args.tree.resolve()] if args.tree else [])
    per_round = {}
    for tree in trees:
        per_round[tree] = (_count(tree, 3 * args.rounds) - _count(tree, args.rounds)) / (2 * args.rounds)
        print(f"{tree}: {per_round[tree] / 1e6:.3f} M instructions per round")
    if args.tree:
        print(f"ratio this / other: {per_round[trees[0]] / per_round[trees[1]]:.3f}")


if __name__ == "__main__":
    main()
