"""Security headers on every response: what a page may load, and that no other
site may put it in a frame.

The pages need little: their stylesheet and app.js from /static, and sockets
back to the host they came from. The policy allows that and nothing else, so
markup slipped into a page (a chat line that escaped its escaping, say) can
neither run a script nor send anything to another host.

Every HTTP response gets every header, JSON and static files included: a JSON
body opened as a page is a document too, nosniff matters most for the scripts
and stylesheets, and one rule leaves no content type forgotten. (A socket's
101 goes out before `after_request` runs; it loads nothing and needs none.) A
header that a view set itself is kept: a page that needs another policy sets
its own.
"""

from flask import Flask, Response

CONTENT_SECURITY_POLICY = "; ".join(
    [
        # Refuse whatever is not named below: fonts, media, frames, workers.
        # https://developer.mozilla.org/en-US/docs/Web/HTTP/Reference/Headers/Content-Security-Policy/default-src
        "default-src 'none'",
        # /static/app.js; no inline <script>, no on* attributes, no eval().
        "script-src 'self'",
        # /static/style.css; no <style> element, no style="" attribute.
        "style-src 'self'",
        # base.html's icon is `data:,`, an empty image that spares the browser
        # a request for /favicon.ico.
        "img-src 'self' data:",
        # 'self' also matches ws: and wss: to the page's own host and port
        # (CSP Level 3, "Does url match expression in origin": 'self'), so the
        # sockets need no scheme-host of their own. Chromium does so, as
        # tests/test_browser.py checks.
        # https://www.w3.org/TR/CSP3/#match-url-to-source-expression
        "connect-src 'self'",
        # A <base> slipped into a page would re-point its relative URLs.
        # https://developer.mozilla.org/en-US/docs/Web/HTTP/Reference/Headers/Content-Security-Policy/base-uri
        "base-uri 'self'",
        # Forms post here only: a form slipped into a page cannot send the
        # password elsewhere.
        "form-action 'self'",
        # No page of any site, this one included, may frame these (clickjacking).
        # https://developer.mozilla.org/en-US/docs/Web/HTTP/Reference/Headers/Content-Security-Policy/frame-ancestors
        "frame-ancestors 'none'",
        # No plugins. default-src says so already; this stays true should
        # anyone loosen default-src.
        "object-src 'none'",
    ]
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # frame-ancestors for browsers that predate it.
    # https://developer.mozilla.org/en-US/docs/Web/HTTP/Reference/Headers/X-Frame-Options
    "X-Frame-Options": "DENY",
    # Use the Content-Type as given: a script must be served as JavaScript to
    # run, and no response is guessed to be HTML.
    # https://developer.mozilla.org/en-US/docs/Web/HTTP/Reference/Headers/X-Content-Type-Options
    "X-Content-Type-Options": "nosniff",
    # The URL (a ?next=, say) never leaves this site. Not no-referrer: over
    # HTTPS, Flask-WTF's CSRF check refuses a form post without a Referer of
    # this host (WTF_CSRF_SSL_STRICT).
    # https://developer.mozilla.org/en-US/docs/Web/HTTP/Reference/Headers/Referrer-Policy
    "Referrer-Policy": "same-origin",
}


def register_security_headers(app: Flask) -> None:
    app.after_request(add_security_headers)


def add_security_headers(response: Response) -> Response:
    """Add each header the response does not carry yet."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
