"""The probes: /healthz for "the process answers", /readyz for "send traffic"."""

from .conftest import client_of, make_app


def test_healthz_answers_200(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_readyz_answers_200_when_the_database_answers(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json == {
        "status": "ready",
        "checks": {"database": "ok", "broadcast": "ok"},
    }


def test_readyz_answers_503_while_the_database_is_down(app_settings, tmp_path):
{%- if cookiecutter.database == "postgresql" %}
    # A port where no PostgreSQL listens.
    from .conftest import free_port

    down = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
{%- else %}
    down = f"sqlite:///{tmp_path / 'no-such-folder' / 'app.db'}"
{%- endif %}
    client = client_of(make_app({**app_settings, "DATABASE_URL": down}))
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json == {
        "status": "unavailable",
        "checks": {"database": "unavailable", "broadcast": "ok"},
    }
    assert client.get("/healthz").status_code == 200
