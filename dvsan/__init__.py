"""dvsan: the shared, pure core of the distributed virtual SAN (model, allocation, protocol, names)."""

__version__ = "0.1.0"
