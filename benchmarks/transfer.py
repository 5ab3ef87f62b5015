"""Transfer throughput: HttpFileExchange upload+download of a large file vs curl, same server, loopback.

The server (``fedpipe.server.serve``, run by ``fedpipe.server.testing.ServerProcess``) runs in a
subprocess so that this process's memory is the client's only. Prints the time of one upload plus
one download for fedpipe and for ``curl`` (best of ``--repeat``), the ratio curl_time /
fedpipe_time (target >= 0.7) and the growth of this process's peak RSS during fedpipe's
transfers (read from /proc; target < 64 MiB). Both clients present a researcher token (issued
with ``TokenStore`` over the server's root), as every exchange route requires one. Run:

    python benchmarks/transfer.py            # a 400 MB file
    python benchmarks/transfer.py --quick    # a 40 MB file
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedpipe.adapters.http_exchange import HttpFileExchange  # noqa: E402
from fedpipe.server.auth import TokenStore, bearer  # noqa: E402
from fedpipe.server.testing import ServerProcess  # noqa: E402

MIB = 1024 * 1024


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); tell whether it worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def make_file(path: Path, size: int) -> None:
    block = os.urandom(4 * MIB)
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            fh.write(block[: min(left, len(block))])
            left -= len(block)


def issue_token(root: Path) -> str:
    store = TokenStore(root)
    try:
        return store.issue("researcher", "benchmark").token
    finally:
        store.close()


def fedpipe_transfer(url: str, src: Path, dest: Path, size: int, token: str) -> float:
    dest.unlink(missing_ok=True)
    start = time.perf_counter()
    with HttpFileExchange(f"{url}/upload", read_timeout=120, headers=bearer(token)) as ex:
        link = ex.upload(src).unwrap()
        ex.download(link, dest, max_bytes=size).unwrap()
    return time.perf_counter() - start


def curl_transfer(url: str, src: Path, dest: Path, token: str) -> float:
    dest.unlink(missing_ok=True)
    auth = f"Authorization: Bearer {token}"
    start = time.perf_counter()
    reply = subprocess.run(
        ["curl", "-sSf", "-H", auth, "-F", f"file=@{src}", f"{url}/upload"],
        check=True,
        capture_output=True,
        text=True,
    )
    link = httpx.Response(200, content=reply.stdout).json()["file"]
    subprocess.run(["curl", "-sSf", "-H", auth, "-o", str(dest), link], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a 40 MB file instead of 400 MB")
    parser.add_argument("--size-mb", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to put files (default: a temp dir)")
    args = parser.parse_args()
    if shutil.which("curl") is None:
        sys.exit("curl is needed for the baseline")
    size = (args.size_mb or (40 if args.quick else 400)) * 1000 * 1000
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        src, dest = work / "payload.bin", work / "copy.bin"
        make_file(src, size)
        server = ServerProcess(work / "exchange")
        url = server.start()
        token = issue_token(work / "exchange")
        try:
            fedpipe_transfer(url, src, dest, size, token)  # warm up: imports, connection, page cache
            assert dest.read_bytes()[:4096] == src.read_bytes()[:4096]
            before = status_kib("VmRSS")
            peak_ok = reset_peak_rss()
            ours, theirs = [], []
            for _ in range(args.repeat):
                ours.append(fedpipe_transfer(url, src, dest, size, token))
                theirs.append(curl_transfer(url, src, dest, token))
            growth = (status_kib("VmHWM") - before) / 1024
        finally:
            server.stop()
    mb = size / 1e6
    best_ours, best_curl = min(ours), min(theirs)
    print(f"file: {mb:.0f} MB, upload + download over loopback, best of {args.repeat}")
    print(
        f"fedpipe: {best_ours:.2f} s ({2 * mb / best_ours:.0f} MB/s)   runs: {', '.join(f'{t:.2f}' for t in ours)}"
    )
    print(
        f"curl:    {best_curl:.2f} s ({2 * mb / best_curl:.0f} MB/s)   runs: {', '.join(f'{t:.2f}' for t in theirs)}"
    )
    median = statistics.median(theirs) / statistics.median(ours)
    print(f"ratio curl/fedpipe: {best_curl / best_ours:.2f} best, {median:.2f} median   (target >= 0.7)")
    note = "" if peak_ok else " (VmHWM could not be reset: upper bound)"
    print(f"peak RSS growth during fedpipe transfers: {growth:.1f} MiB{note}   (target < 64 MiB)")


if __name__ == "__main__":
    main()
