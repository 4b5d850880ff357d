"""deeplab_dpc: DeepLab with the Dense Prediction Cell, in TensorFlow 2 / Keras."""

__version__ = "0.1.0"
