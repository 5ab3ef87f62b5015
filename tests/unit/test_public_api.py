"""The public API: what `fedpipe` exports, and that importing it loads no adapter library."""

import subprocess
import sys

import fedpipe
import fedpipe.testing


def test_public_names_are_importable() -> None:
    """Issue 2 item 8: the core names come from `fedpipe`; `fedpipe.testing` has a fake of every port."""
    for name in (
        "TrainRequest",
        "RoundContext",
        "RoundError",
        "ErrorCode",
        "TrainReply",
        "NamedStep",
        "standard_round",
        "validation_round",
        "run_round",
        "NodeSettings",
    ):
        assert name in fedpipe.__all__
        assert getattr(fedpipe, name) is not None
    for fake in (
        "InMemoryFileExchange",
        "InMemoryApprovalRegistry",
        "InMemoryDatasetRegistry",
        "InMemoryStateStore",
        "RegistryPlanLoader",
        "RecordingMonitor",
        "FakeClock",
        "InMemorySecaggKeys",
        "FakeCrypter",
    ):
        assert hasattr(fedpipe.testing, fake)


def test_importing_fedpipe_loads_no_adapter() -> None:
    """`import fedpipe` pulls in neither httpx nor sqlite3; `fedpipe.Node` loads the composition root on use."""
    code = (
        "import sys, fedpipe; "
        "assert 'httpx' not in sys.modules and 'sqlite3' not in sys.modules, 'adapter loaded'; "
        "node = fedpipe.Node; assert node.__module__ == 'fedpipe.bootstrap'; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "ok", out.stderr
