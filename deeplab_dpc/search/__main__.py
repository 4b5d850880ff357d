"""`python -m deeplab_dpc.search`: the architecture search program."""

from deeplab_dpc.flags import cli

# The search program imports TensorFlow with its flags: without its C++
# start-up lines unless --verbosity asks.
with cli.native_logs_silenced():
    import tensorflow as tf

    from deeplab_dpc.search import program

    # The devices too: their lines (cuInit...) come when they start.
    tf.config.list_physical_devices()

if __name__ == "__main__":
    program.run()
