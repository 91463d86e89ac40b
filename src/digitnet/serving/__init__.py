"""``digitnet serve``: the draw-a-digit page and a TensorFlow-Serving-style REST API.

    protocol.py   TF Serving's predict request/answer format, pure (no web framework)
    limits.py     ServerLimits: every size, timeout and cap, with its default
    trust.py      Host and Origin checks, log-safe text
    asgi.py       raw ASGI plumbing: Host/Origin refusals, body-size limit, request log
    connection.py uvicorn's httptools protocol plus head-size limit, read and idle timeouts,
                  connection cap
    work.py       WorkPool: images and large bodies in work processes, capped
    schemas.py    Pydantic models of the non-hot answers (FastAPI documents them from these)
    deps.py       what routes depend on (the model served, the work pool)
    routes/       pages.py (/, /static), tf_serving.py (/v1/models/...), api.py (/api/...),
                  docs.py (/docs, /openapi.json), report.py (/report)
    app.py        create_app(model): assembles middleware, routes and error handlers
    server.py     socket binding, uvicorn, --workers, serve()
    static/       the page, its script and style, the docs reader

Serves the NumPy model from ``digitnet.inference``; never imports TensorFlow.
"""
