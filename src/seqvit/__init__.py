"""seqvit: sequence-length scaling of Vision Transformers for ERA5 forecasting, end to end."""

__version__ = "0.1.0"
