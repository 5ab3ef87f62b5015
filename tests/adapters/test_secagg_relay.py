"""The server's key relay and its client: contract tests run against the real server and the fake alike,
then the server's bounds, credentials and expiry."""

import base64
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from attrs import define, field
from returns.result import Failure, Success

from fedpipe.adapters.secagg_relay import HttpSecaggRelay
from fedpipe.errors import ErrorCode
from fedpipe.ports import SecaggRelay
from fedpipe.server import create_app
from fedpipe.server.auth import TokenStore, bearer
from fedpipe.server.relay import KeyRelay
from fedpipe.server.testing import running_app
from fedpipe.testing import InMemorySecaggRelay


@define
class FakeTime:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@define
class Relayed:
    url: str
    tokens: TokenStore
    relay: KeyRelay
    time: FakeTime
    made: list[HttpSecaggRelay] = field(factory=list)

    def client(self, node_id: str) -> HttpSecaggRelay:
        self.made.append(HttpSecaggRelay(self.url, token=self.tokens.issue("node", node_id).token))
        return self.made[-1]

    def headers(self, node_id: str, role: str = "node") -> dict[str, str]:
        return bearer(self.tokens.issue(role, node_id).token)


@pytest.fixture
def relayed(tmp_path: Path) -> Iterator[Relayed]:
    """The real server with a small key relay (2 set-ups, 3 parties, 10 s) on a fake clock."""
    fake = FakeTime()
    relay = KeyRelay(max_setups=2, max_parties=3, ttl_seconds=10.0, clock=fake)
    tokens = TokenStore(tmp_path / "server")
    with running_app(create_app(tmp_path / "server", relay=relay)) as url:
        relayed = Relayed(url=url, tokens=tokens, relay=relay, time=fake)
        yield relayed
        for client in relayed.made:
            client.close()
    tokens.close()


# --- the contract, for the HTTP client and the fake -------------------------------------------------


Clients = Callable[[str], SecaggRelay]


@pytest.fixture(params=["http", "fake"])
def clients(request: pytest.FixtureRequest, relayed: Relayed) -> Iterator[Clients]:
    """``clients(node_id)``: that node's view of one relay (the server's, or one shared fake)."""
    if request.param == "fake":
        fake = InMemorySecaggRelay()
        yield lambda _node_id: fake
    else:
        yield relayed.client


def test_published_offers_are_collected_by_every_party(clients: Clients) -> None:
    a, b = clients("node-a"), clients("node-b")
    assert a.publish("setup-1", "node-a", b"offer of a") == Success(None)
    assert a.publish("setup-1", "node-a", b"offer of a") == Success(None)  # the same again: harmless

    def later() -> None:
        time.sleep(0.2)
        b.publish("setup-1", "node-b", b"offer of b")

    thread = threading.Thread(target=later)
    thread.start()
    got = a.collect("setup-1", count=2, wait=20.0)  # waits for b's offer
    thread.join()
    assert got == Success({"node-a": b"offer of a", "node-b": b"offer of b"})
    assert b.collect("setup-1", count=2, wait=0.0) == got


def test_too_few_offers_come_back_after_the_wait(clients: Clients) -> None:
    a = clients("node-a")
    a.publish("setup-2", "node-a", b"offer")
    assert a.collect("setup-2", count=3, wait=0.1) == Success({"node-a": b"offer"})


def test_a_second_different_offer_of_a_node_is_refused_and_the_first_stays(clients: Clients) -> None:
    a = clients("node-a")
    a.publish("setup-3", "node-a", b"first")
    refused = a.publish("setup-3", "node-a", b"second")
    assert isinstance(refused, Failure)
    assert (
        refused.failure().code is ErrorCode.SECAGG_CONFIG and "another key offer" in refused.failure().public
    )
    assert a.collect("setup-3", count=1, wait=0.0) == Success({"node-a": b"first"})


# --- the server's bounds, credentials and expiry ------------------------------------------------------


def test_an_oversized_offer_is_refused_before_it_is_kept(relayed: Relayed) -> None:
    response = httpx.put(
        f"{relayed.url}/secagg/s/keys/node-a", content=b"x" * 4097, headers=relayed.headers("node-a")
    )
    assert response.status_code == 413 and "4096 bytes" in response.json()["error"]
    refused = relayed.client("node-a").publish("s", "node-a", b"x" * 5000)
    assert isinstance(refused, Failure) and "refused this node's key offer" in refused.failure().public
    assert relayed.relay.setups == 0


def test_the_relay_holds_a_bounded_number_of_set_ups_and_parties(relayed: Relayed) -> None:
    a = relayed.client("node-a")
    assert a.publish("one", "node-a", b"o") == Success(None)
    assert a.publish("two", "node-a", b"o") == Success(None)
    full = a.publish("three", "node-a", b"o")
    assert isinstance(full, Failure) and full.failure().public.startswith("The server's key relay is full")
    for n in ("node-b", "node-c"):
        assert relayed.client(n).publish("one", n, b"o") == Success(None)
    response = httpx.put(
        f"{relayed.url}/secagg/one/keys/node-d", content=b"o", headers=relayed.headers("node-d")
    )
    assert response.status_code == 429 and "at most 3 offers" in response.json()["error"]


def test_a_set_up_expires_with_its_offers(relayed: Relayed) -> None:
    a = relayed.client("node-a")
    a.publish("old", "node-a", b"first")
    relayed.time.now += 10.0
    assert relayed.relay.setups == 0
    assert a.publish("old", "node-a", b"another") == Success(None)  # a new set-up of the same id
    assert a.collect("old", count=1, wait=0.0) == Success({"node-a": b"another"})


def test_only_the_node_itself_posts_and_only_parties_read(relayed: Relayed) -> None:
    url = relayed.url
    relayed.client("node-a").publish("s", "node-a", b"offer")
    assert httpx.put(f"{url}/secagg/s/keys/node-a", content=b"x").status_code == 401
    assert (
        httpx.put(f"{url}/secagg/s/keys/node-a", content=b"x", headers=relayed.headers("node-b")).status_code
        == 403
    )
    researcher = relayed.headers("researcher-1", role="researcher")
    assert httpx.put(f"{url}/secagg/s/keys/researcher-1", content=b"x", headers=researcher).status_code == 403
    assert httpx.get(f"{url}/secagg/s/keys", headers=researcher).status_code == 403
    # a node that posted nothing in the set-up reads nothing of it, whether or not it exists
    for setup in ("s", "nothing"):
        answer = httpx.get(
            f"{url}/secagg/{setup}/keys", params={"wait": "5"}, headers=relayed.headers("node-b")
        )
        assert answer.status_code == 200 and answer.json() == {"keys": {}}
    answer = httpx.get(f"{url}/secagg/s/keys", headers=relayed.headers("node-a"))
    assert answer.status_code == 200 and answer.json() == {
        "keys": {"node-a": base64.b64encode(b"offer").decode()}
    }


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/secagg/s/keys", {"wait": "nan"}, 400),
        ("/secagg/s/keys", {"wait": "31"}, 400),
        ("/secagg/s/keys", {"count": "0"}, 400),
        ("/secagg/s/keys", {"count": "4"}, 400),
        ("/secagg/bad%20id/keys", {}, 400),
    ],
)
def test_bad_reads_are_refused(relayed: Relayed, path: str, params: dict[str, str], status: int) -> None:
    relayed.client("node-a").publish("s", "node-a", b"offer")
    response = httpx.get(f"{relayed.url}{path}", params=params, headers=relayed.headers("node-a"))
    assert response.status_code == status and "error" in response.json()


def test_the_client_refuses_ids_it_cannot_relay_and_an_unreachable_server(relayed: Relayed) -> None:
    refused = relayed.client("node-a").publish("a/b", "node-a", b"o")
    assert isinstance(refused, Failure) and "to be relayed" in refused.failure().public
    client = HttpSecaggRelay("http://127.0.0.1:9", token="fp1.x", connect_timeout=0.5)
    gone = client.collect("s", count=1, wait=0)
    client.close()
    assert isinstance(gone, Failure)
    assert (
        gone.failure().public == "The node could not reach the server's key relay."
        and gone.failure().retryable
    )
