"""``digitnet serve``: the draw-a-digit page and a TensorFlow-Serving-style REST API.

    protocol.py   TF Serving's predict request/answer format, pure (no web framework)
    asgi.py       raw ASGI plumbing: body-size limit, request log, body/header helpers
    schemas.py    Pydantic models of the non-hot answers (FastAPI documents them from these)
    deps.py       what routes depend on (the model served)
    routes/       pages.py (/, /static), tf_serving.py (/v1/models/...), api.py (/api/...),
                  docs.py (/docs, /openapi.json)
    app.py        create_app(model): assembles middleware, routes and error handlers
    server.py     socket binding, uvicorn, serve()
    static/       the page, its script and style, the docs reader

Serves the NumPy model from ``digitnet.inference``; never imports TensorFlow.
"""
