from flask import Blueprint, current_app, render_template
from flask_login import current_user, login_required

bp = Blueprint("pages", __name__)


@bp.get("/")
@login_required
def index():
    """The demo page: an echo log and a chat, both over authenticated sockets."""
    return render_template(
        "index.html",
        user=current_user,
        max_message_size=current_app.config["WS_MAX_MESSAGE_SIZE"],
    )
