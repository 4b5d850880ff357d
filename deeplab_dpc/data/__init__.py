"""Data: DeepLab's TFRecord format, data set registry, input pipeline."""
