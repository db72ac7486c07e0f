"""4lock-core: the vapp-core node appliance."""

__version__ = "0.1.0"
