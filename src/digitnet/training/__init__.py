"""Training with TensorFlow: the network's operations, the tutorial's five functions, the
training engine, in-graph augmentation, and whole runs with checkpoints.

The only package that imports TensorFlow; nothing outside it imports it at module level.
"""
