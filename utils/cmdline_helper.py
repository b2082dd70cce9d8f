"""Command-line interface: the original's flags, names, defaults, groups and aliases.

`parse_cmdline(argv)` returns the parsed namespace after checking the combinations that
cannot work; every problem exits through argparse with one line naming the flag.
"""

import argparse
import sys

from model.config import ARCHITECTURES, DATA_FORMATS
from utils import checks, modes
from utils.distributed.launcher import launched_rank
from utils.precision import AMP_DTYPES

ARCHS = tuple(ARCHITECTURES)  # the model's table, in its order


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _non_negative_float(text):
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _fraction(text):
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _checked(convert, problem):
    """An argparse type: `convert` the text, then refuse it if `problem(value)` says why."""

    def parse(text):
        value = convert(text)
        if problem(value):
            raise argparse.ArgumentTypeError(problem(value))
        return value

    parse.__name__ = convert.__name__
    return parse


_positive_float = _checked(float, checks.positive_problem)
_image_size = _checked(int, checks.image_size_problem)


def _add_general_args(p):
    p.add_argument(
        "--arch", choices=ARCHS, default="resnet50", help="Architecture of model to run."
    )
    p.add_argument(
        "--mode",
        choices=tuple(modes.MODES),
        default="train_and_evaluate",
        help="The execution mode of the script.",
    )
    p.add_argument("--export_dir", help="Directory in which to write exported SavedModel.")
    p.add_argument("--to_predict", help="Path to file or directory of files to run prediction on.")
    p.add_argument(
        "--batch_size", type=_positive_int, required=True, help="Size of each minibatch per GPU."
    )
    p.add_argument("--num_iter", type=_positive_int, default=1, help="Number of iterations to run.")
    p.add_argument(
        "--run_iter",
        type=int,
        default=-1,
        help="Number of training iterations to run on single run (-1: all that remain).",
    )
    p.add_argument(
        "--iter_unit", choices=("epoch", "batch"), default="epoch", help="Unit of iterations."
    )
    p.add_argument(
        "--warmup_steps",
        type=_non_negative_int,
        default=50,
        help="Number of steps considered as warmup and not taken into account for "
        "performance measurements.",
    )
    p.add_argument(
        "--model_dir",
        help="Directory in which to write model. If undefined, results dir will be used.",
    )
    p.add_argument(
        "--results_dir",
        default=".",
        help="Directory in which to write training logs, summaries and checkpoints.",
    )
    p.add_argument(
        "--log_filename",
        default="log.json",
        help="Name of the JSON file to which write the training log.",
    )
    p.add_argument(
        "--display_every",
        type=_positive_int,
        default=10,
        help="How often (in batches) to print out running information.",
    )
    p.add_argument("--seed", type=int, help="Random seed.")
    p.add_argument(
        "--gpu_memory_fraction",
        type=float,
        default=0.7,
        help="Limit memory fraction used by training script for DALI.",
    )
    p.add_argument(
        "--gpu_id",
        type=_non_negative_int,
        default=0,
        help="Specify ID of the target GPU on multi-device platform. "
        "Effective only for single-GPU mode.",
    )
    p.add_argument(
        "--finetune_checkpoint",
        help="Path to pre-trained checkpoint which will be used for fine-tuning.",
    )
    p.add_argument(
        "--use_final_conv",
        action="store_true",
        help="Use convolution operator instead of MLP as last layer.",
    )
    p.add_argument(
        "--quant_delay",
        type=_non_negative_int,
        default=0,
        help="Number of steps to be run before quantization starts to happen.",
    )
    p.add_argument(
        "--quantize",
        action="store_true",
        help="Quantize weights and activations during training. "
        "(Defaults to Asymmetric quantization)",
    )
    p.add_argument(
        "--use_qdq",
        action="store_true",
        help="Use quantize-and-dequantize ops instead of FakeQuantWithMinMaxVars ops.",
    )
    p.add_argument(
        "--symmetric",
        action="store_true",
        help="Quantize weights and activations during training using symmetric quantization.",
    )
    p.add_argument(
        "--num_classes",
        type=_positive_int,
        default=1000,
        help="Number of classes of the classifier (1001 reproduces the original's head).",
    )


def _add_dataset_args(parser):
    g = parser.add_argument_group("Dataset arguments")
    g.add_argument(
        "--data_dir",
        help="Path to dataset in TFRecord format. Files should be named 'train-*' and "
        "'validation-*'. Without it, synthetic data is used.",
    )
    g.add_argument(
        "--data_idx_dir",
        help="Path to index files for DALI. Files should be named 'train-*' and 'validation-*'.",
    )
    g.add_argument("--dali", action="store_true", help="Enable DALI data input.")
    g.add_argument(
        "--image_size",
        type=_image_size,
        default=224,
        help="Training and evaluation crop size for real data (evaluation resizes the shorter "
        "side to image_size * 256 / 224 first).",
    )
    g.add_argument(
        "--synthetic_data_size",
        type=_image_size,
        default=224,
        help="Dimension of image for synthetic dataset.",
    )


def _add_training_args(parser):
    g = parser.add_argument_group("Training arguments")
    g.add_argument(
        "--lr_init", type=_positive_float, default=0.1, help="Initial value for the learning rate."
    )
    g.add_argument(
        "--lr_warmup_epochs",
        type=_non_negative_float,
        default=5,
        help="Number of warmup epochs for learning rate schedule.",
    )
    g.add_argument(
        "--weight_decay",
        type=_non_negative_float,
        default=1e-4,
        help="Weight Decay scale factor.",
    )
    g.add_argument(
        "--weight_init",
        choices=("fan_in", "fan_out"),
        default="fan_out",
        help="Model weight initialization method.",
    )
    g.add_argument(
        "--momentum",
        type=_fraction,
        default=0.9,
        help="SGD momentum value for the Momentum optimizer.",
    )
    g.add_argument(
        "--label_smoothing",
        type=_fraction,
        default=0.0,
        help="The value of label smoothing.",
    )
    g.add_argument(
        "--mixup",
        type=_non_negative_float,
        default=0.0,
        help="The alpha parameter for mixup (if 0 then mixup is not applied).",
    )
    g.add_argument(
        "--cosine_lr",
        "--use_cosine",
        "--use_cosine_lr--cosine",  # the original's typo alias, kept for old command lines
        dest="cosine_lr",
        action="store_true",
        help="Use cosine learning rate schedule.",
    )


def _add_optimization_args(parser):
    g = parser.add_argument_group("Generic optimization arguments")
    g.add_argument(
        "--xla",
        "--use_xla",
        dest="xla",
        action="store_true",
        help="Enable XLA (Accelerated Linear Algebra) computation for improved performance.",
    )
    g.add_argument(
        "--data_format",
        choices=DATA_FORMATS,
        default="NHWC",
        help="Data format used to do calculations.",
    )
    g.add_argument(
        "--amp",
        "--use_tf_amp",
        dest="amp",
        action="store_true",
        help="Enable Automatic Mixed Precision to speedup computation using tensor cores.",
    )

    g.add_argument(
        "--cpu", action="store_true", help="Run model on CPU instead of GPU (hides the GPUs)."
    )

    g = parser.add_argument_group("Automatic Mixed Precision arguments")
    g.add_argument(
        "--static_loss_scale",
        "--loss_scale",
        dest="static_loss_scale",
        type=float,
        default=-1,
        help="Use static loss scaling in FP32 AMP (-1: dynamic loss scaling).",
    )
    g.add_argument(
        "--amp_dtype",
        choices=AMP_DTYPES,
        default=None,
        help="The dtype of --amp: float16 (with loss scaling) or bfloat16 (none needed). "
        "Default: float16 on GPUs; bfloat16 on CPUs with bfloat16 instructions.",
    )
    # The original's hidden, unused flag: accepted so its command lines still parse.
    g.add_argument("--use_static_loss_scaling", action="store_true", help=argparse.SUPPRESS)


class _Parser(argparse.ArgumentParser):
    """Reports a usage error as one line (no usage dump) and exits with status 2."""

    def error(self, message):
        # Under a launcher every process parses the same command line: one says it.
        text = f"{self.prog}: error: {message} (see {self.prog} --help)\n"
        self.exit(2, text if launched_rank() == 0 else None)


def build_parser():
    parser = _Parser(
        prog="main.py",
        description="ResNet50 v1.5 / ResNeXt101-32x4d / SE-ResNeXt101-32x4d for TensorFlow 2",
        allow_abbrev=False,
    )
    _add_general_args(parser)
    _add_dataset_args(parser)
    _add_training_args(parser)
    _add_optimization_args(parser)
    return parser


def _check_combinations(parser, args):
    """Reject flag combinations that cannot do what they say."""
    if args.mode == "predict" and not args.to_predict:
        parser.error("--mode predict needs --to_predict (an image file or a directory of images)")
    if args.to_predict and args.mode != "predict":
        parser.error("--to_predict is only used with --mode predict")
    if args.dali and args.mode == "predict":
        parser.error("--dali reads TFRecords, --mode predict reads image files: drop --dali")
    if args.dali and not args.data_idx_dir:
        parser.error("--dali needs --data_idx_dir (make the index with utils/dali_index.sh)")
    if args.dali and not args.data_dir:
        parser.error("--dali needs --data_dir (DALI reads TFRecords; synthetic data needs no DALI)")
    mode = modes.MODES[args.mode]
    if mode.evaluates and not args.data_dir:
        parser.error(f"--mode {args.mode} needs --data_dir (accuracy on synthetic data is noise)")
    # Synthetic data has no epochs: --num_iter counts batches, as in the original. With
    # --iter_unit epoch on real data the runtime checks this once it knows the size.
    counts_batches = args.iter_unit == "batch" or not args.data_dir
    too_short = modes.benchmark_too_short(args.num_iter, args.warmup_steps, args.mode)
    if mode.benchmark and counts_batches and too_short:
        parser.error(too_short)
    if args.run_iter == 0 or args.run_iter < -1:
        parser.error(
            f"--run_iter must be -1 (run to the end) or a positive integer, got {args.run_iter}"
        )
    if args.static_loss_scale != -1 and not args.amp:
        # The original ignored it: its command lines keep working, with a word about it.
        if launched_rank() == 0:
            print(
                f"warning: --static_loss_scale {args.static_loss_scale:g} has no effect "
                "without --amp",
                file=sys.stderr,
                flush=True,
            )
    elif checks.loss_scale_problem(args.static_loss_scale):
        parser.error(checks.loss_scale_problem(args.static_loss_scale))
    if args.amp_dtype and not args.amp:
        parser.error(f"--amp_dtype {args.amp_dtype} only applies with --amp: add --amp")
    if args.mixup and not mode.trains:
        parser.error(f"--mixup only applies to training, not --mode {args.mode}")
    quant_flags = [f for f in ("use_qdq", "symmetric") if getattr(args, f)]
    if quant_flags and not args.quantize:
        parser.error(f"--{quant_flags[0]} only applies with --quantize")
    if args.quant_delay and not args.quantize:
        parser.error("--quant_delay only applies with --quantize")
    # --quantize, --symmetric and --use_qdq build the QAT model in every mode (evaluating
    # or exporting a QAT checkpoint needs it); the delay only matters to training.
    if args.quant_delay and not mode.trains:
        parser.error(f"--quant_delay only applies to training, not --mode {args.mode}")
    if not 0.0 < args.gpu_memory_fraction <= 1.0:
        parser.error(f"--gpu_memory_fraction must be in (0, 1], got {args.gpu_memory_fraction}")


def parse_cmdline(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_combinations(parser, args)
    if args.model_dir is None:
        args.model_dir = args.results_dir
    return args
