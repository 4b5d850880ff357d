"""layers of deeplab_dpc."""
