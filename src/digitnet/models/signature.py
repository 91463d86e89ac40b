"""The names a served or exported model answers to, as TensorFlow Serving spells them.

``digitnet serve`` speaks TF Serving's REST API under these names, and ``digitnet export``
writes SavedModels whose ``serving_default`` signature uses them, so one client works with
both.
"""

from __future__ import annotations

MODEL_NAME = "digitnet"
MODEL_VERSION = "1"
SIGNATURE_NAME = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
