"""deel-lip-ext: provably k-Lipschitz Keras 3 layers, certification and plain-Keras export."""

__version__ = "0.1.0"
