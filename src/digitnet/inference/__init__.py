"""Using a trained model without TensorFlow: the model file, a NumPy forward pass, image
preprocessing, predictions and evaluation.

Nothing under this package imports TensorFlow (a test walks the imports): prediction starts in
a fraction of a second and runs where TensorFlow is not installed.
"""
