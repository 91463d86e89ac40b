"""The ``digitnet`` command: one module per verb over the library's functions."""
