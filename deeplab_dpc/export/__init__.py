"""Exporters: SavedModels for TF Serving and LiteRT (TFLite) models."""
