"""``digitnet serve``: the TensorFlow-Serving REST protocol, the FastAPI app, the page.

Serves the NumPy model from ``digitnet.inference``; never imports TensorFlow.
"""
