"""The built-in demo: the published DPC against ASPP, side by side.

  python -m deeplab_dpc.demo

Builds MobileNet-v2 and Xception DeepLab models (random weights: nothing is
downloaded) with the published Cityscapes DPC and with ASPP at rates
6, 12, 18, and prints params and multiply-adds of the head, of its branches
alone (the DPC paper's count) and of the whole model.
"""

from absl import app

from deeplab_dpc.models import accounting
from deeplab_dpc.models import deeplab
from deeplab_dpc.search import space

# The paper's Cityscapes setting: full 1025x2049 images, output stride 16.
CROP_SIZE = (1025, 2049)
OUTPUT_STRIDE = 16
NUM_CLASSES = 19
VARIANTS = ("mobilenet_v2", "xception")

_COLUMNS = [
    ("backbone", "backbone"),
    ("head", "head"),
    ("head_params", "head params"),
    ("head_madds", "head MAdds"),
    ("branch_params", "branch params"),
    ("branch_madds", "branch MAdds"),
    ("total_params", "total params"),
    ("total_madds", "total MAdds"),
]


def compare(variants, crop_size, output_stride, num_classes):
    """Rows of the DPC-vs-ASPP table, one per (backbone, head)."""
    rows = []
    rates = tuple(r * 16 // output_stride for r in (6, 12, 18))
    heads = [
        ("DPC (published)", dict(dense_prediction_cell=space.published_cell())),
        (f"ASPP {','.join(map(str, rates))}", dict(atrous_rates=rates)),
    ]
    for variant in variants:
        for head_name, head in heads:
            options = deeplab.ModelOptions(
                model_variant=variant,
                crop_size=crop_size,
                output_stride=output_stride,
                num_classes=num_classes,
                **head,
            )
            counts = accounting.count(deeplab.build_deeplab(options))
            rows.append(
                {
                    "backbone": variant,
                    "head": head_name,
                    "head_params": counts["head"]["params"],
                    "head_madds": counts["head"]["madds"],
                    "branch_params": counts["head_branches"]["params"],
                    "branch_madds": counts["head_branches"]["madds"],
                    "total_params": counts["total"]["params"],
                    "total_madds": counts["total"]["madds"],
                }
            )
    return rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many arguments: {argv[1:]}")
    print(report(VARIANTS, CROP_SIZE, OUTPUT_STRIDE, NUM_CLASSES))


def report(variants, crop_size, output_stride, num_classes):
    """The demo's text: the table and the DPC/ASPP ratios per backbone."""
    rows = compare(variants, crop_size, output_stride, num_classes)
    lines = [
        f"DeepLab heads at {crop_size[0]}x{crop_size[1]}, output stride "
        f"{output_stride}, {num_classes} classes (MAdds per image; params "
        f"include batch-norm statistics)",
        accounting.format_table(rows, _COLUMNS),
    ]
    for dpc, aspp in zip(rows[::2], rows[1::2]):
        lines.append(
            f"{dpc['backbone']}: DPC/ASPP head params "
            f"{dpc['head_params'] / aspp['head_params']:.2f}, head MAdds "
            f"{dpc['head_madds'] / aspp['head_madds']:.2f}"
        )
    return "\n".join(lines)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
