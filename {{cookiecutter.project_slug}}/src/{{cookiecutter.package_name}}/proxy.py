"""Behind nginx: the client's address, scheme and host from X-Forwarded-*.

Werkzeug's ProxyFix believes those headers from whoever sends them, so a
client that reaches gunicorn directly could claim any address. Here they are
believed only from the peers in FORWARDED_ALLOW_IPS, the same list gunicorn
uses for X-Forwarded-Proto (gunicorn.conf.py); anyone else keeps its own
address. gunicorn cannot do this part: it never rewrites REMOTE_ADDR.
https://werkzeug.palletsprojects.com/en/stable/middleware/proxy_fix/
"""

import ipaddress
from collections.abc import Iterable

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix


def trust_forwarded_headers(app: Flask) -> None:
    """Wrap the app in ProxyFix when TRUSTED_PROXY_COUNT proxies stand in front."""
    hops = app.config["TRUSTED_PROXY_COUNT"]
    if hops:
        app.wsgi_app = ProxyFixForAllowedPeers(
            app.wsgi_app, hops, app.config["FORWARDED_ALLOW_IPS"]
        )


class ProxyFixForAllowedPeers:
    """ProxyFix for requests whose peer is an allowed proxy; the app as is
    for everyone else."""

    def __init__(self, wsgi_app, hops: int, allowed: Iterable[str]) -> None:
        self.direct = wsgi_app
        # No x_port: nginx sends the port inside X-Forwarded-Host ($http_host);
        # its own port is the container's, not the one the browser used.
        self.proxied = ProxyFix(wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
        allowed = list(allowed)
        self.any_peer = "*" in allowed
        self.networks = [ipaddress.ip_network(a) for a in allowed if a != "*"]

    def __call__(self, environ, start_response):
        if self.peer_is_allowed(environ.get("REMOTE_ADDR", "")):
            return self.proxied(environ, start_response)
        return self.direct(environ, start_response)

    def peer_is_allowed(self, address: str) -> bool:
        if self.any_peer:
            return True
        if not address:
            # A UNIX socket has no peer address; gunicorn trusts it too.
            return True
        try:
            peer = ipaddress.ip_address(address)
        except ValueError:
            return False
        peer = getattr(peer, "ipv4_mapped", None) or peer
        return any(peer in network for network in self.networks)
