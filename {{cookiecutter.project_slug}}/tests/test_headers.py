"""Security headers (security.py): every response, page or not, carries the
policy and the framing, sniffing and referrer headers, with these values."""

import pytest

from .conftest import client_of, make_app

# Written out rather than imported, so that a change to a value is a change here
# too. tests/test_browser.py checks that the demo page works under this policy.
EXPECTED = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        "img-src 'self' data:; connect-src 'self'; base-uri 'self'; "
        "form-action 'self'; frame-ancestors 'none'; object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def security_headers(response) -> dict:
    """The headers of EXPECTED's names (None for a missing one) of a response."""
    return {name: response.headers.get(name) for name in EXPECTED}


def test_demo_page_has_the_security_headers(client, auth, user):
    auth.log_in(user)
    response = client.get("/")
    assert response.status_code == 200
    assert 'id="status"' in response.text
    assert security_headers(response) == EXPECTED


@pytest.mark.parametrize("path", ["/auth/login", "/auth/register"])
def test_account_pages_have_the_security_headers(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert security_headers(response) == EXPECTED


def test_redirect_to_the_login_page_has_the_security_headers(client):
    response = client.get("/")
    assert response.status_code == 302
    assert security_headers(response) == EXPECTED


def test_unavailable_page_has_the_security_headers(
    app_settings, client, auth, user, tmp_path
):
    """The 503 page comes from an error handler, not a view; it is a page too."""
    auth.log_in(user)
    # The same SECRET_KEY, so the session cookie holds; loading its user needs
    # a database, and this one cannot be opened.
    unreachable = tmp_path / "no-such-folder" / "app.db"
    down = make_app({**app_settings, "DATABASE_URL": f"sqlite:///{unreachable}"})
    browser = client_of(down)
    browser.set_cookie("session", client.get_cookie("session").value)
    response = browser.get("/")
    assert response.status_code == 503
    assert response.headers["Content-Type"].startswith("text/html")
    assert security_headers(response) == EXPECTED


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/healthz", 200),
        ("POST", "/auth/token", 401),
        ("GET", "/static/app.js", 200),
        ("GET", "/static/style.css", 200),
    ],
)
def test_other_responses_have_the_security_headers_too(client, method, path, status):
    """JSON and static files get the same headers: nosniff matters most for
    scripts and stylesheets, and the policy does no harm where no page uses it."""
    response = client.open(path, method=method)
    assert response.status_code == status
    assert security_headers(response) == EXPECTED


def test_a_header_the_response_already_has_is_kept():
    """A view that sets a header on purpose (a page that must be framed by a
    partner, say) keeps its value; the others are still added."""
    from flask import Response

    # Imported here, not above, so that without the module only this test fails.
    from {{ cookiecutter.package_name }}.security import add_security_headers

    own_policy = "frame-ancestors https://partner.example"
    response = Response(headers={"Content-Security-Policy": own_policy})
    add_security_headers(response)
    assert response.headers.getlist("Content-Security-Policy") == [own_policy]
    assert security_headers(response) == {
        **EXPECTED,
        "Content-Security-Policy": own_policy,
    }
