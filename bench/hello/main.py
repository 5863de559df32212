"""The cold-start baseline: the smallest functions-framework HTTP function there is.

It answers 200 on every path (so `/healthz` too) and imports nothing of ours, so anything the real
functions cost beyond it is our code's doing.
"""

import flask
import functions_framework


@functions_framework.http
def hello(request: flask.Request) -> str:
    return "ok"
