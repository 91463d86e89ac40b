"""The app's routes, one module per group: ``pages`` (the page and its files), ``tf_serving``
(TensorFlow Serving's status, metadata and hot ``:predict``), ``api`` (``/api/health``,
``/api/predict``), ``read`` (``/api/read``), ``docs`` (``/docs`` and the OpenAPI document)."""
