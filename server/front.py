"""A door to the loopback SuperLink: the only way in from beyond loopback.

Open-source Flower 1.42 serves its Fleet, Control and Runtime APIs on one HTTP port and authenticates
only the Fleet API (SuperNode signatures), so a SuperLink reachable from the network lets anyone with
the CA certificate list, register, revoke and run. ``fedrec server`` therefore binds the SuperLink to
127.0.0.1 and puts doors in front of it, each a TLS-terminating reverse proxy (uvicorn + httpx, the
HTTP stack Flower itself uses):

- the *fleet door* (``--fleet-only``) on the public port relays exactly the routes of Flower's Fleet
  router, POST only, and answers everything else with 403, so devices work and nothing else does;
- the *operator door* (``--client-ca``) relays every route, but TLS admits only a client holding a
  certificate issued by the operator CA (``ssl.CERT_REQUIRED``); devices have no such certificate.

Run as ``python -m fedrec.server.front ...`` by the launcher, one process per door.
"""

from __future__ import annotations

import argparse
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.applications import Starlette

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
REFUSED = (
    "fedrec: this port serves only the Fleet API (devices); the Control API answers only the operator "
    "(`fedrec operator`, with the operator certificate)"
)


@cache
def fleet_routes() -> frozenset[str]:
    """The Fleet API's paths, read from Flower's own router so a new Flower route is not missed silently."""
    from flwr.superlink.routers.fleet.router import router
    from starlette.routing import Route

    # HTTP routes only: the door relays POST requests, never a websocket or a mount.
    return frozenset(route.path for route in router.routes if isinstance(route, Route))


def admitted(method: str, path: str, fleet_only: bool) -> bool:
    """Exact match on method and path: no prefixes, so ``/v1/fleet/../control`` and friends stay out."""
    return not fleet_only or (method == "POST" and path in fleet_routes())


def create_app(upstream: str, upstream_ca: str, fleet_only: bool) -> Starlette:
    """An ASGI app relaying admitted requests to ``https://upstream`` (verified against ``upstream_ca``)."""
    import httpx
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    client = httpx.AsyncClient(
        base_url=f"https://{upstream}",
        verify=ssl.create_default_context(cafile=upstream_ca),
        timeout=httpx.Timeout(None, connect=10.0),
    )

    async def relay(request: Request) -> Response:
        if not admitted(request.method, request.url.path, fleet_only):
            return JSONResponse({"detail": REFUSED}, status_code=403)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        outbound = client.build_request(
            request.method,
            request.url.path,
            params=request.url.query or None,
            headers=headers,
            content=await request.body(),
        )
        reply = await client.send(outbound, stream=True)
        return StreamingResponse(
            reply.aiter_raw(),
            status_code=reply.status_code,
            headers={k: v for k, v in reply.headers.items() if k.lower() not in HOP_BY_HOP},
            background=BackgroundTask(reply.aclose),
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", relay, methods=methods)], lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedrec.server.front", description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True, help="the server certificate devices and operators verify")
    parser.add_argument("--key", required=True)
    parser.add_argument("--upstream", required=True, help="127.0.0.1:PORT of the SuperLink")
    parser.add_argument("--upstream-ca", required=True, help="the CA of the SuperLink's loopback certificate")
    door = parser.add_mutually_exclusive_group(required=True)
    door.add_argument("--fleet-only", action="store_true", help="relay the Fleet API only (the device door)")
    door.add_argument("--client-ca", help="relay everything to clients with a certificate from this CA")
    args = parser.parse_args(argv)

    import uvicorn

    uvicorn.run(
        create_app(args.upstream, args.upstream_ca, args.fleet_only),
        host=args.host,
        port=args.port,
        ssl_certfile=args.cert,
        ssl_keyfile=args.key,
        ssl_cert_reqs=ssl.CERT_NONE if args.fleet_only else ssl.CERT_REQUIRED,
        ssl_ca_certs=args.client_ca,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    main()
