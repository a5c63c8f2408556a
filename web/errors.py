"""The web edge of OpusError: a form's error comes back as a message on the page it was
sent from; a page that cannot be shown says why, with the error's HTTP status."""

from __future__ import annotations

from flask import Flask, flash, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from opus_paas.errors import Forbidden, InvalidName, NotFound, OpusError, UsageError
from web import context, forms

STATUS = {NotFound: 404, Forbidden: 403, InvalidName: 400, UsageError: 400}


def status_of(exc: OpusError) -> int:
    for kind, status in STATUS.items():
        if isinstance(exc, kind):
            return status
    return 409


def register(app: Flask) -> None:
    @app.errorhandler(OpusError)
    def opus_error(exc: OpusError) -> BaseResponse | tuple[str, int]:
        message = context.shown(exc.message)
        status = status_of(exc)
        if request.method == "POST" and status != 404:
            flash(forms.short(message), "error")
            return redirect(forms.back(_page_of_form()), code=303)
        return render_template("error.html", message=message, status=status), status

    def _page_of_form() -> str:
        """The page that holds the form that was sent."""
        args = request.view_args or {}
        if request.blueprint in ("apps", "databases") and "name" in args:
            return url_for(f"{request.blueprint}.show", name=args["name"])
        if request.blueprint == "builder":
            return url_for("builder.new")
        if request.blueprint in ("keys", "users"):
            return url_for(f"{request.blueprint}.index")
        return url_for("apps.index")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[str, int]:
        status = exc.code or 500
        return render_template("error.html", message=exc.description, status=status), status
