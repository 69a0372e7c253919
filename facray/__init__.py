"""facray: facial-attribute training and labelling on Ray."""
__version__ = "0.2.0"
