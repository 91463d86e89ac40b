"""Datasets: the IDX format, MNIST's files (a folder, the cache or a mirror) and its splits.

No TensorFlow; scikit-learn only inside the functions that need it.
"""
