"""The server's key relay: nodes swap the signed key offers of a LOM set-up through it (nothing secret).

In fedpipe's own federations the nodes of a LOM context agree their pairwise secrets among
themselves (``fedpipe.steps.agree``): each posts one small signed offer (its ephemeral public key)
and reads everyone's. The server only carries those blobs: it cannot forge them (each is signed
by a node identity key that the other nodes' owners pinned) and it holds no secret.

| method | path                                           | who                               | answers |
|--------|------------------------------------------------|-----------------------------------|---------|
| PUT    | /secagg/{secagg_id}/keys/{node_id}             | that node                         | the raw offer -> 204; 409 another offer of it is there; 413; 429 |
| GET    | /secagg/{secagg_id}/keys?wait=s&count=n        | any node                          | 200 ``{"keys": {node_id: base64}}`` once n are there or after s |

The first offer of a node in a set-up stays: posting the same bytes again is harmless (204), other
bytes are refused (409), so that no peer ever reads two offers of one node. Only a node that has
posted in a set-up reads its offers: any other gets ``{"keys": {}}`` at once, as for a set-up that
does not exist (or no longer does: a node that finds its own offer missing posts it again).

Bounds: an offer is at most ``max_offer_bytes`` (413 while streaming); at most ``max_setups``
set-ups live at once and ``max_parties`` offers in one (429); a set-up is forgotten ``ttl_seconds``
after its first offer (its offers with it). ``wait`` is a number of seconds in [0, 30], ``count``
an integer in [1, ``max_parties``]. The offers are kept in memory only: a restarted server has
none, and the nodes then post theirs again.
"""

import asyncio
import base64
import contextlib
import hmac
import time
from collections.abc import Callable
from typing import Final

from attrs import define, field
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fedpipe.server.auth import Principal, TokenStore, authorize, forbidden, valid_subject
from fedpipe.server.bodies import TooLarge, json_error, read_body
from fedpipe.server.tasks import MAX_WAIT_S, parse_wait

__all__ = [
    "DEFAULT_MAX_OFFER_BYTES",
    "DEFAULT_MAX_PARTIES",
    "DEFAULT_MAX_SETUPS",
    "DEFAULT_SETUP_TTL_S",
    "KeyRelay",
    "RelayFull",
    "relay_routes",
]

DEFAULT_MAX_OFFER_BYTES: Final = 4 * 1024
DEFAULT_MAX_SETUPS: Final = 256
DEFAULT_MAX_PARTIES: Final = 64
DEFAULT_SETUP_TTL_S: Final = 3600.0


class RelayFull(Exception):
    """The relay holds as many set-ups, or this set-up as many offers, as it may; the message says which."""


@define
class _Setup:
    created: float
    offers: dict[str, bytes] = field(factory=dict)


class KeyRelay:
    """The offers of the live set-ups, in memory, bounded; long polls wait on an asyncio condition.

    The synchronous methods may run from any thread (they hold no lock across an await); the
    ``async`` ones must run on the server's event loop. ``clock`` gives seconds (expiry).
    """

    def __init__(
        self,
        *,
        max_offer_bytes: int = DEFAULT_MAX_OFFER_BYTES,
        max_setups: int = DEFAULT_MAX_SETUPS,
        max_parties: int = DEFAULT_MAX_PARTIES,
        ttl_seconds: float = DEFAULT_SETUP_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_offer_bytes < 1 or max_setups < 1 or max_parties < 2 or not ttl_seconds > 0:
            raise ValueError("the relay needs positive bounds and room for two parties per set-up")
        self.max_offer_bytes = max_offer_bytes
        self.max_setups = max_setups
        self.max_parties = max_parties
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self._setups: dict[str, _Setup] = {}
        self._changed: asyncio.Condition | None = None
        self._changed_loop: asyncio.AbstractEventLoop | None = None

    def _expire(self) -> None:
        now = self.clock()
        for secagg_id in [s for s, setup in self._setups.items() if now - setup.created >= self.ttl_seconds]:
            del self._setups[secagg_id]

    def clear(self) -> None:
        """Forget every set-up and its offers (as a restart does: they are kept in memory only)."""
        self._setups.clear()

    @property
    def setups(self) -> int:
        """How many set-ups are live now."""
        self._expire()
        return len(self._setups)

    def post(self, secagg_id: str, node_id: str, offer: bytes) -> bool:
        """Keep ``node_id``'s offer for ``secagg_id``: True when kept (or the same one already was),
        False when the node's offer there is another one; RelayFull when no room is left."""
        self._expire()
        setup = self._setups.get(secagg_id)
        if setup is None:
            if len(self._setups) >= self.max_setups:
                raise RelayFull("the relay holds as many key set-ups as it may; retry later")
            setup = self._setups[secagg_id] = _Setup(created=self.clock())
        held = setup.offers.get(node_id)
        if held is not None:
            return hmac.compare_digest(held, offer)
        if len(setup.offers) >= self.max_parties:
            raise RelayFull(f"a key set-up holds at most {self.max_parties} offers")
        setup.offers[node_id] = offer
        return True

    def offers(self, secagg_id: str, node_id: str) -> dict[str, bytes] | None:
        """The offers of ``secagg_id``, or None when ``node_id`` has posted none there."""
        self._expire()
        setup = self._setups.get(secagg_id)
        if setup is None or node_id not in setup.offers:
            return None
        return dict(setup.offers)

    def _condition(self) -> asyncio.Condition:
        loop = asyncio.get_running_loop()
        if self._changed is None or self._changed_loop is not loop:
            self._changed = asyncio.Condition()
            self._changed_loop = loop
        return self._changed

    async def notify(self) -> None:
        """Wake the waiting readers (an offer came)."""
        cond = self._condition()
        async with cond:
            cond.notify_all()

    async def wait_offers(
        self, secagg_id: str, node_id: str, count: int, wait: float
    ) -> dict[str, bytes] | None:
        """Like ``offers``, waiting up to ``wait`` seconds for there to be ``count`` of them."""
        deadline = time.monotonic() + min(max(wait, 0.0), MAX_WAIT_S)
        cond = self._condition()
        async with cond:
            while True:
                found = self.offers(secagg_id, node_id)
                left = deadline - time.monotonic()
                if found is None or len(found) >= count or left <= 0:
                    return found
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cond.wait(), timeout=left)


def _count(text: str | None, top: int) -> int | None:
    """``count`` of a GET: an integer in [1, top] (missing: 1); else None.

    >>> _count("3", 8), _count(None, 8), _count("0", 8), _count("x", 8), _count("9", 8)
    (3, 1, None, None, None)
    """
    if text is None:
        return 1
    if not (text.isascii() and text.isdigit()) or len(text) > 6:
        return None
    value = int(text)
    return value if 1 <= value <= top else None


def relay_routes(relay: KeyRelay, tokens: TokenStore) -> list[Route]:
    """The key-relay routes over ``relay``, authenticated by ``tokens``, to mount in the server app."""

    def ids(request: Request) -> tuple[str, str | None] | Response:
        secagg_id = request.path_params["secagg_id"]
        node_id = request.path_params.get("node_id")
        if not valid_subject(secagg_id):
            return json_error(400, "a secagg id is 1-128 characters among A-Z a-z 0-9 _ . -")
        if node_id is not None and not valid_subject(node_id):
            return json_error(400, "invalid node id")
        return secagg_id, node_id

    async def put_offer(request: Request) -> Response:
        who = authorize(request, tokens, "node")
        if not isinstance(who, Principal):
            return who
        named = ids(request)
        if isinstance(named, Response):
            return named
        secagg_id, node_id = named
        if node_id is None or not hmac.compare_digest(who.subject.encode(), node_id.encode()):
            return forbidden()
        try:
            offer = await read_body(request, relay.max_offer_bytes)
        except TooLarge:
            return json_error(413, f"a key offer is limited to {relay.max_offer_bytes} bytes")
        except ClientDisconnect:
            return Response(status_code=400)
        if not offer:
            return json_error(400, "a key offer is not empty")
        try:
            kept = relay.post(secagg_id, node_id, offer)
        except RelayFull as err:
            return json_error(429, str(err))
        if not kept:
            return json_error(409, "this node already posted another key offer for this set-up")
        await relay.notify()
        return Response(status_code=204)

    async def get_offers(request: Request) -> Response:
        who = authorize(request, tokens, "node")
        if not isinstance(who, Principal):
            return who
        named = ids(request)
        if isinstance(named, Response):
            return named
        secagg_id, _ = named
        wait = parse_wait(request.query_params.get("wait"))
        if wait is None:
            return json_error(400, f"wait is a number of seconds from 0 to {MAX_WAIT_S:g}")
        count = _count(request.query_params.get("count"), relay.max_parties)
        if count is None:
            return json_error(400, f"count is an integer from 1 to {relay.max_parties}")
        found = await relay.wait_offers(secagg_id, who.subject, count, wait) or {}
        body = {node: base64.b64encode(offer).decode("ascii") for node, offer in sorted(found.items())}
        return JSONResponse({"keys": body})

    return [
        Route("/secagg/{secagg_id}/keys/{node_id}", put_offer, methods=["PUT"]),
        Route("/secagg/{secagg_id}/keys", get_offers, methods=["GET"]),
    ]
