"""The probes: /healthz for "the process answers", /readyz for "send traffic"."""

import requests


def test_healthz_answers_200(server):
    response = requests.get(f"{server.url}/healthz", timeout=30)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_answers_200_when_the_database_answers(server):
    response = requests.get(f"{server.url}/readyz", timeout=30)
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "broadcast": "ok"},
    }


def test_readyz_answers_503_while_the_database_is_down(start_server, tmp_path):
{%- if cookiecutter.database == "postgresql" %}
    # A port where no PostgreSQL listens.
    from .conftest import free_port

    down = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
{%- else %}
    down = f"sqlite:///{tmp_path / 'no-such-folder' / 'app.db'}"
{%- endif %}
    server = start_server(DATABASE_URL=down)
    response = requests.get(f"{server.url}/readyz", timeout=30)
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {"database": "unavailable", "broadcast": "ok"},
    }
    assert requests.get(f"{server.url}/healthz", timeout=30).status_code == 200
