"""The node's side of LOM key agreement on disk: schema 3, pinned peers, the identity key file, the owner's commands."""

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from returns.result import Failure, Success

from fedpipe.adapters.identity_key import IDENTITY_FILE, FileIdentityKey
from fedpipe.adapters.sqlite import SCHEMA_VERSION, Database, NodeAdminError, SqliteSecaggKeys
from fedpipe.adapters.sqlite.peers import SqliteLomKeys, SqlitePinnedPeers
from fedpipe.adapters.sqlite.secagg import DhContext
from fedpipe.cli import main
from fedpipe.errors import ErrorCode
from fedpipe.ports import PairwiseSecrets, PendingOffer
from fedpipe.secagg.identity import fingerprint, load_public_key, new_identity_key, public_pem


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "node.sqlite")
    yield database
    database.close()


def test_schema_3_adds_pinned_peers_and_pending_offers_and_an_older_file_upgrades_in_place(
    tmp_path: Path,
) -> None:
    path = tmp_path / "node.sqlite"
    first = Database(path)
    SqliteSecaggKeys(first).add_dh_context(
        DhContext(secagg_id="ctx", job_id="job", parties=("a", "b"), pairwise={"b": bytes(32)})
    )
    first.close()
    # what a schema-2 fedpipe left: no table of schema 3, user_version 2
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE pinned_peers")
    conn.execute("DROP TABLE lom_pending_offers")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    again = Database(path)
    try:
        assert SCHEMA_VERSION == 3 and again.schema_version == 3
        assert SqlitePinnedPeers(again).list() == ()
        assert SqliteSecaggKeys(again).dh_context("ctx", "job").unwrap() is not None  # kept
    finally:
        again.close()


def test_pinning_a_peer(db: Database) -> None:
    peers = SqlitePinnedPeers(db)
    key = new_identity_key()
    pinned = peers.add("node-2", public_pem(key))
    assert pinned.fingerprint == fingerprint(key) and pinned.fingerprint.startswith("SHA256:")
    assert peers.add("node-2", public_pem(key)) == pinned  # the same key again: nothing changes
    with pytest.raises(NodeAdminError, match=r"already pinned with key SHA256:.*remove it first"):
        peers.add("node-2", public_pem(new_identity_key()))
    other = peers.add("node-1", public_pem(new_identity_key()))
    assert [p.node_id for p in peers.list()] == ["node-1", "node-2"]
    assert peers.get("node-1") == Success(other) and peers.get("node-9") == Success(None)
    assert peers.remove("node-1") is True and peers.remove("node-1") is False
    assert [p.node_id for p in peers.list()] == ["node-2"]


@pytest.mark.parametrize(
    ("node_id", "pem", "match"),
    [
        ("node-2", b"not a key", "not a readable PEM public key"),
        ("node-2", public_pem(ec.generate_private_key(ec.SECP384R1())), "not a P-256 key"),
        ("node-2", b"x" * 5000, "acceptable size"),
        ("", None, "non-empty"),
        ("a\nb", None, "printable"),
    ],
)
def test_a_bad_pin_is_refused_in_one_line(db: Database, node_id: str, pem: bytes | None, match: str) -> None:
    with pytest.raises(NodeAdminError, match=match) as caught:
        SqlitePinnedPeers(db).add(node_id, pem if pem is not None else public_pem(new_identity_key()))
    assert "\n" not in str(caught.value)
    assert SqlitePinnedPeers(db).list() == ()


def test_the_lom_key_store_keeps_contexts_and_reads_pins(db: Database) -> None:
    peers = SqlitePinnedPeers(db)
    store = SqliteLomKeys(peers, SqliteSecaggKeys(db), db)
    pem = public_pem(new_identity_key())
    peers.add("node-2", pem)
    assert store.pinned_key("node-2") == Success(pem) and store.pinned_key("node-3") == Success(None)
    secrets = PairwiseSecrets(
        secagg_id="ctx", job_id="job", parties=("node-1", "node-2"), pairwise={"node-2": b"s" * 32}
    )
    assert store.pairwise("ctx", "job") == Success(None)
    assert store.store_pairwise(secrets) == Success(None)
    assert store.pairwise("ctx", "job") == Success(secrets)
    other_job = store.pairwise("ctx", "other")
    assert isinstance(other_job, Failure) and other_job.failure().code is ErrorCode.SECAGG_CONFIG
    bad = store.store_pairwise(
        PairwiseSecrets(
            secagg_id="ctx", job_id="job", parties=("node-1", "node-2"), pairwise={"node-2": b"x"}
        )
    )
    assert (
        isinstance(bad, Failure)
        and bad.failure().public == "The node could not store the agreed LOM context."
    )


def test_the_identity_key_is_made_once_private_and_signs(tmp_path: Path) -> None:
    root = tmp_path / "node"
    identity = FileIdentityKey.of_root(root)
    assert not (root / IDENTITY_FILE).exists()  # nothing happens before the key is needed
    signature = identity.sign(b"message").unwrap()
    mode = stat.S_IMODE((root / IDENTITY_FILE).stat().st_mode)
    assert mode == 0o600
    public = load_public_key(identity.public_pem()).unwrap()
    public.verify(signature, b"message", ec.ECDSA(hashes.SHA256()))
    again = FileIdentityKey.of_root(root)  # another process, later: the same key
    assert again.fingerprint() == identity.fingerprint() and again.public_pem() == identity.public_pem()


def test_two_processes_making_the_key_at_once_get_the_same_one(tmp_path: Path) -> None:
    prints: list[str] = []
    barrier = threading.Barrier(4)

    def make() -> None:
        barrier.wait()
        prints.append(FileIdentityKey.of_root(tmp_path).fingerprint())

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(prints) == 4 and len(set(prints)) == 1
    assert sorted(os.listdir(tmp_path)) == [IDENTITY_FILE]  # no temporary file left


def test_a_broken_key_file_is_never_replaced(tmp_path: Path) -> None:
    (tmp_path / IDENTITY_FILE).write_bytes(b"garbage")
    identity = FileIdentityKey.of_root(tmp_path)
    with pytest.raises(NodeAdminError, match="move it away"):
        identity.public_pem()
    refused = identity.sign(b"m")
    assert isinstance(refused, Failure) and refused.failure().code is ErrorCode.SECAGG_CONFIG
    assert str(tmp_path) not in refused.failure().public
    assert (tmp_path / IDENTITY_FILE).read_bytes() == b"garbage"


def test_owners_exchange_and_pin_keys_with_the_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["identity", "--root", str(a), "--node-id", "node-a", "--out", str(tmp_path / "a.pem")]) == 0
    shown = capsys.readouterr().out
    assert main(["identity", "--root", str(b), "--node-id", "node-b"]) == 0
    assert "-----BEGIN PUBLIC KEY-----" in capsys.readouterr().out
    print_a = shown.split("identity key ")[1].split()[0]
    assert print_a == FileIdentityKey.of_root(a).fingerprint()
    wrong = "SHA256:" + "0" * 64
    key_file = str(tmp_path / "a.pem")
    add = ["peers", "add", "node-a", "--root", str(b), "--key", key_file, "--fingerprint"]
    assert main([*add, wrong]) == 2
    assert "not pinned" in capsys.readouterr().err
    assert main([*add, print_a]) == 0
    assert main(["peers", "list", "--root", str(b)]) == 0
    assert f"node-a  {print_a}" in capsys.readouterr().out
    assert main(["peers", "remove", "node-a", "--root", str(b)]) == 0
    assert main(["peers", "remove", "node-a", "--root", str(b)]) == 2
    assert main(["peers", "list", "--root", str(tmp_path / "absent")]) == 2


def test_a_pending_offer_is_kept_until_its_context_is_stored(db: Database) -> None:
    store = SqliteLomKeys(SqlitePinnedPeers(db), SqliteSecaggKeys(db), db)
    offer = PendingOffer(
        secagg_id="ctx", job_id="job", parties=("node-1", "node-2"), ephemeral_key=b"k" * 32, offer=b'{"o":1}'
    )
    assert store.pending_offer("ctx") == Success(None)
    assert store.keep_pending_offer(offer) == Success(None)
    assert store.pending_offer("ctx") == Success(offer)
    secrets = PairwiseSecrets(
        secagg_id="ctx", job_id="job", parties=("node-1", "node-2"), pairwise={"node-2": b"s" * 32}
    )
    assert store.store_pairwise(secrets) == Success(None)
    assert store.pending_offer("ctx") == Success(None)
