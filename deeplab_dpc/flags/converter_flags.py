"""Flags shared by the converters in `datasets/` (`build_*_data.py`).

Programs call `define_write_flags` once at import, then pass
`WriteFlags.options()` to a `converters.convert_*` function; library code
never reads `FLAGS`.
"""

import contextlib
import dataclasses
import os

from absl import flags

from deeplab_dpc.flags import recorded


@dataclasses.dataclass(frozen=True)
class WriteFlags:
    """The FlagHolders of the output flags every converter has."""

    output_dir: flags.FlagHolder
    num_shards: flags.FlagHolder
    num_workers: flags.FlagHolder
    overwrite: flags.FlagHolder
    skip_bad_examples: flags.FlagHolder

    def options(self):
        """The parsed flags as `converters.WriteOptions`."""
        from deeplab_dpc.data import converters

        return converters.WriteOptions(
            num_shards=self.num_shards.value,
            num_workers=self.num_workers.value,
            overwrite=self.overwrite.value,
            skip_bad_examples=self.skip_bad_examples.value,
        )


def define_write_flags(num_shards=4):
    """Defines --output_dir, --num_shards, --num_workers, --overwrite and
    --skip_bad_examples.

    Args:
      num_shards: int, the program's default shard count (DeepLab's: 10 for
        Cityscapes, 4 for the others).

    Returns:
      A `WriteFlags`.
    """
    return WriteFlags(
        output_dir=flags.DEFINE_string(
            "output_dir", None, "Where the TFRecord shards are written."
        ),
        num_shards=flags.DEFINE_integer(
            "num_shards", num_shards, "Shards per split.", lower_bound=1
        ),
        num_workers=flags.DEFINE_integer(
            "num_workers",
            2,
            "Worker processes that decode, check and encode examples.",
            lower_bound=1,
        ),
        overwrite=flags.DEFINE_boolean(
            "overwrite", False, "Replace existing shards of the splits."
        ),
        skip_bad_examples=flags.DEFINE_boolean(
            "skip_bad_examples",
            False,
            "Skip bad examples and report them at the end, instead of failing.",
        ),
    )


def write_flagfile(output_dir, program):
    """Writes the resolved flags to `<output_dir>/<program>.flags` (this
    package's flags only, not absl's or TensorFlow's)."""
    with open(os.path.join(output_dir, f"{program}.flags"), "w") as f:
        f.write(recorded.package_flags_into_string())


@contextlib.contextmanager
def user_errors():
    """Turns bad-input errors into a one-line message and exit status 1.

    Raises:
      SystemExit: on `OSError` (missing files, existing shards) or
        `ValueError` (bad examples, empty lists), with the error's message.
    """
    try:
        yield
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e
