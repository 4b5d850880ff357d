"""models of deeplab_dpc."""
