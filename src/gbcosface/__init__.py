"""GB-CosFace face recognition training and evaluation."""
__version__ = "0.1.0"
