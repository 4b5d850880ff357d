"""`python -m deeplab_dpc.search`: the architecture search program."""

from deeplab_dpc.search import program

if __name__ == "__main__":
    program.run()
