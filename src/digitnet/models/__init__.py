"""What a model is, as plain data: every choice list, the layer types, architectures, presets.

Imports neither TensorFlow nor the inference code; everything else builds on it.
"""
