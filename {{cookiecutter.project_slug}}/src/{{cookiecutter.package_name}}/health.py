"""Probes for load balancers and orchestrators."""

from flask import Blueprint, current_app
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from .extensions import db
from .realtime.hub import HubUnavailable, current_hub

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process answers. No I/O, so it stays fast while a dependency is down."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    """Every dependency answers: send traffic here."""
    checks = {"database": "ok"}
    try:
        db.session.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        current_app.logger.warning("readiness: database unavailable: %s", error)
        checks["database"] = "unavailable"
    finally:
        db.session.remove()
    try:
        current_hub().check()
    except HubUnavailable as error:
        current_app.logger.warning("readiness: broadcast unavailable: %s", error)
        checks["broadcast"] = "unavailable"
    else:
        checks["broadcast"] = "ok"
    ready = all(state == "ok" for state in checks.values())
    return {"status": "ready" if ready else "unavailable", "checks": checks}, (
        200 if ready else 503
    )
