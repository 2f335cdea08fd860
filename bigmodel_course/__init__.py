"""Companion package of the book 大模型应用开发: attention, Transformers, training, serving."""

__version__ = "0.1.0"
