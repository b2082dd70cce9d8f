"""The command line keeps the original's flags, defaults and aliases, and rejects nonsense."""

import pytest

from tests.support import run_main_process
from utils.cmdline_helper import build_parser, parse_cmdline

# Every flag of the original's usage text (README "The main.py script"), with a value.
ORIGINAL_FLAGS = {
    "--arch": "resnext101-32x4d",
    "--mode": "train",
    "--export_dir": "/tmp/export",
    "--batch_size": "8",
    "--num_iter": "90",
    "--run_iter": "10",
    "--iter_unit": "epoch",
    "--warmup_steps": "100",
    "--model_dir": "/tmp/model",
    "--results_dir": "/tmp/results",
    "--log_filename": "train.json",
    "--display_every": "20",
    "--seed": "7",
    "--gpu_memory_fraction": "0.5",
    "--gpu_id": "1",
    "--finetune_checkpoint": "/tmp/ckpt",
    "--use_final_conv": None,
    "--quant_delay": "5",
    "--quantize": None,
    "--use_qdq": None,
    "--symmetric": None,
    "--data_dir": "/data/tfrecords",
    "--data_idx_dir": "/data/dali_idx",
    "--dali": None,
    "--synthetic_data_size": "128",
    "--lr_init": "0.256",
    "--lr_warmup_epochs": "8",
    "--weight_decay": "6.103515625e-05",
    "--weight_init": "fan_in",
    "--momentum": "0.875",
    "--label_smoothing": "0.1",
    "--mixup": "0.2",
    "--cosine_lr": None,
    "--xla": None,
    "--data_format": "NCHW",
    "--amp": None,
    "--static_loss_scale": "128",
}


def _argv(flags):
    argv = []
    for flag, value in flags.items():
        argv.append(flag)
        if value is not None:
            argv.append(value)
    return argv


def test_every_original_flag_is_accepted_together():
    args = parse_cmdline(_argv(ORIGINAL_FLAGS))
    assert args.arch == "resnext101-32x4d"
    assert args.batch_size == 8
    assert args.lr_init == pytest.approx(0.256)
    assert args.weight_decay == pytest.approx(1 / 16384)
    assert args.static_loss_scale == 128
    assert args.data_format == "NCHW"
    assert args.dali and args.xla and args.amp and args.cosine_lr and args.quantize


def test_defaults_match_the_original():
    args = parse_cmdline(["--batch_size", "32", "--data_dir", "/data"])
    expected = {
        "arch": "resnet50",
        "mode": "train_and_evaluate",
        "num_iter": 1,
        "run_iter": -1,
        "iter_unit": "epoch",
        "warmup_steps": 50,
        "results_dir": ".",
        "model_dir": ".",
        "log_filename": "log.json",
        "display_every": 10,
        "seed": None,
        "gpu_memory_fraction": 0.7,
        "gpu_id": 0,
        "use_final_conv": False,
        "quant_delay": 0,
        "synthetic_data_size": 224,
        "lr_init": 0.1,
        "lr_warmup_epochs": 5,
        "weight_decay": 1e-4,
        "weight_init": "fan_out",
        "momentum": 0.9,
        "label_smoothing": 0.0,
        "mixup": 0.0,
        "cosine_lr": False,
        "xla": False,
        "data_format": "NHWC",
        "amp": False,
        "static_loss_scale": -1,
        "num_classes": 1000,
    }
    assert {key: getattr(args, key) for key in expected} == expected


def test_model_dir_defaults_to_results_dir():
    args = parse_cmdline(["--batch_size", "1", "--data_dir", "/d", "--results_dir", "/r"])
    assert args.model_dir == "/r"


@pytest.mark.parametrize(
    ("alias", "dest"),
    [("--use_xla", "xla"), ("--use_tf_amp", "amp"), ("--use_cosine", "cosine_lr")],
)
def test_boolean_aliases(alias, dest):
    args = parse_cmdline(["--batch_size", "1", "--mode", "train", alias])
    assert getattr(args, dest) is True


def test_loss_scale_alias():
    args = parse_cmdline(["--batch_size", "1", "--mode", "train", "--amp", "--loss_scale", "64"])
    assert args.static_loss_scale == 64


def test_help_groups_flags_as_the_original():
    text = build_parser().format_help()
    groups = [
        "Dataset arguments:",
        "Training arguments:",
        "Generic optimization arguments:",
        "Automatic Mixed Precision arguments:",
    ]
    positions = [text.index(group) for group in groups]
    assert positions == sorted(positions)
    assert text.index("\n  --data_dir") > text.index("Dataset arguments:")
    assert text.index("\n  --lr_init") > text.index("Training arguments:")
    assert text.index("\n  --static_loss_scale") > text.index(
        "Automatic Mixed Precision arguments:"
    )


BAD_COMMAND_LINES = [
    (["--batch_size", "0", "--mode", "train"], "--batch_size"),
    (["--batch_size", "-3", "--mode", "train"], "--batch_size"),
    (["--mode", "train"], "--batch_size"),
    (["--batch_size", "8", "--bogus_flag"], "--bogus_flag"),
    (["--batch_size", "8", "--arch", "resnet18"], "--arch"),
    (["--batch_size", "8", "--mode", "predict"], "--to_predict"),
    (["--batch_size", "8", "--mode", "train", "--data_dir", "/d", "--dali"], "--data_idx_dir"),
    (
        ["--batch_size", "8", "--mode", "predict", "--to_predict", "x.jpg", "--dali"],
        "--mode predict",
    ),
    (
        ["--batch_size", "8", "--mode", "training_benchmark", "--num_iter", "50"],
        "--warmup_steps",
    ),
    (
        ["--batch_size", "8", "--mode", "inference_benchmark", "--iter_unit", "batch"],
        "--num_iter",
    ),
    (["--batch_size", "8", "--mode", "evaluate"], "--data_dir"),
    (["--batch_size", "8", "--mode", "train", "--amp", "--static_loss_scale", "0"], "--static"),
    (["--batch_size", "8", "--mode", "train", "--symmetric"], "--quantize"),
    (["--batch_size", "8", "--mode", "train", "--run_iter", "0"], "--run_iter"),
    (["--batch_size", "8", "--mode", "train", "--momentum", "1.5"], "--momentum"),
    (["--batch_size", "8", "--mode", "train", "--use_xl"], "--use_xl"),
]


@pytest.mark.parametrize(("argv", "flag"), BAD_COMMAND_LINES)
def test_bad_command_lines_exit_2_with_one_line_naming_the_flag(argv, flag):
    proc = run_main_process(*argv, timeout=120, check=False)  # a fresh interpreter's exit 2
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("main.py: error:")
    assert flag in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("rank", "says"), [("0", True), ("1", False)])
def test_under_a_launcher_only_rank_0_reports_a_usage_error(monkeypatch, capsys, rank, says):
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", rank)
    with pytest.raises(SystemExit) as exit_info:
        parse_cmdline(["--mode", "train"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert ("main.py: error:" in err) is says
