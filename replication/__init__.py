"""Replication of Keskar et al. (ICLR 2017), "On Large-Batch Training for Deep Learning:
Generalization Gap and Sharp Minima", in TensorFlow/Keras 3. Entry point: `python -m replication`."""

__version__ = "0.1.0"
