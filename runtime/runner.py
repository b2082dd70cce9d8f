"""The six modes of `main.py`: train, train_and_evaluate, evaluate, predict and the two
benchmarks. `run(args)` sets up the process, then calls the mode's function.

Under a launcher (mpiexec, horovodrun) with several processes, `utils/hvd_utils.py` joins
them with Horovod: rank 0 alone restores checkpoints, logs, writes TensorBoard, checkpoints
and exports; the model, optimizer and loss-scale state are broadcast from it, so every rank
starts from rank 0's step and weights even if only rank 0 sees the checkpoint files.
Phases whose errors may differ between ranks end at `dist.agree_on_errors()`, so a mistake
on any rank ends the whole job with one line. `inference_benchmark` and `predict` run on
rank 0 alone; the other processes exit at once, without starting Horovod.

Test hook: with RNXT_DUMP_WEIGHTS=<dir>, every rank saves its model and optimizer variables
to <dir>/rank<N>.npz when training ends, so tests can compare the ranks' weights. Trainable
weights and optimizer state are identical on all ranks; batch-norm moving statistics (and
QAT input ranges) are each rank's own until rank 0's are broadcast after training.
"""

import functools
import os
import sys

import numpy as np

from model import build_model, quantization
from runtime import checkpoints, environment, evaluation, inputs
from runtime.export import export_saved_model
from runtime.predict import list_images, predict, print_predictions, write_predictions
from runtime.training import Trainer
from utils import data_utils, hvd_utils, launcher
from utils.dllogger_compat import Logger
from utils.errors import UserError
from utils.learning_rate import WarmupDecaySchedule
from utils.optimizers import build_optimizer

METRIC_UNITS = {
    "imgs_per_sec": "img/s",
    "train_throughput": "img/s",
    "train_throughput_per_rank": "img/s",
    "eval_throughput": "img/s",
    "infer_throughput": "img/s",
    "learning_rate": None,
    "top1_accuracy": None,
    "top5_accuracy": None,
    **{
        f"{kind}_latency_{stat}": "ms"
        for kind in ("eval", "infer")
        for stat in ("avg", "p90", "p95", "p99")
    },
}

SINGLE_PROCESS_MODES = ("inference_benchmark", "predict")
DUMP_WEIGHTS_VAR = "RNXT_DUMP_WEIGHTS"


def _build(args, config=None):
    """The model of `config` (a `checkpoints.model_config`; default: the flags'): the
    float model, or with `quantize` its QAT copy (`model/quantization.py`)."""
    config = config or checkpoints.model_config(args)
    model = build_model(
        config["arch"],
        num_classes=config["num_classes"],
        data_format=args.data_format,
        weight_init=args.weight_init,
        use_final_conv=config["use_final_conv"],
        normalize_input=not args.dali,  # DALI delivers normalised images
        padding=config.get("padding", checkpoints.DEFAULT_PADDING),
    )
    if not config["quantize"]:
        return model
    return quantization.quantize_model(
        model,
        symmetric=config["symmetric"],
        use_qdq=config["use_qdq"],
        quant_delay=args.quant_delay,
    )


def _say(dist, message):
    if dist.is_chief:
        print(message, flush=True)


def _make_optimizer(args, dist, plan, model):
    schedule = WarmupDecaySchedule(
        lr_init=args.lr_init,
        global_batch_size=args.batch_size * dist.size,
        steps_per_epoch=plan.steps_per_epoch,
        total_steps=plan.total_steps,
        lr_warmup_epochs=args.lr_warmup_epochs,
        cosine=args.cosine_lr,
    )
    optimizer = build_optimizer(schedule, args.momentum, args.amp, args.static_loss_scale)
    # Create the momentum slots now, so checkpoints restore into them and Horovod can
    # broadcast them before the first step.
    getattr(optimizer, "inner_optimizer", optimizer).build(model.trainable_variables)
    return schedule, optimizer


def optimizer_state(optimizer):
    """The optimizer's variables (step counter, momentum) and, with dynamic loss scaling,
    the loss scale and its counter, which LossScaleOptimizer keeps outside `variables`.
    Every rank must hold the same values: gradients are averaged while still scaled."""
    state = list(optimizer.variables)
    if getattr(optimizer, "dynamic", False):
        state += [optimizer._loss_scale.current_loss_scale, optimizer.dynamic_counter]
    return state


def _restore(args, dist, keeper, model, optimizer):
    """Rank 0's part of resuming: the newest checkpoint in --model_dir, else fine-tune
    weights if asked; the other ranks get the result by broadcast."""
    restored = keeper.restore_latest()
    if restored:
        _say(dist, f"resuming from {restored} at step {int(optimizer.iterations.numpy())}")
    elif args.finetune_checkpoint:
        checkpoints.load_finetune_weights(
            model,
            args.finetune_checkpoint,
            checkpoints.model_config(args),
            functools.partial(_build, args),
            log=functools.partial(_say, dist),
        )


def _dump_weights(dist, variables):
    """The RNXT_DUMP_WEIGHTS test hook (see the module docstring)."""
    directory = os.environ.get(DUMP_WEIGHTS_VAR)
    if not directory:
        return
    os.makedirs(directory, exist_ok=True)
    arrays = {f"{i:04d} {v.name.replace('/', '|')}": v.numpy() for i, v in enumerate(variables)}
    np.savez(os.path.join(directory, f"rank{dist.rank}.npz"), **arrays)


def _train(args, dist, logger, seed, benchmark=False):
    keeper = None
    with dist.agree_on_errors():
        plan = inputs.plan_steps(args, dist)
        model = _build(args)
        schedule, optimizer = _make_optimizer(args, dist, plan, model)
        if not benchmark:
            keeper = checkpoints.CheckpointKeeper(
                args.model_dir,
                model,
                optimizer,
                checkpoints.model_config(args),
                enabled=dist.is_chief,
            )
            if dist.is_chief:
                _restore(args, dist, keeper, model, optimizer)
    state = optimizer_state(optimizer)
    dist.broadcast_variables(model.variables)
    dist.broadcast_variables(state)

    start = int(optimizer.iterations.numpy())
    starts = dist.gather(start, name="start_step")
    if len(set(starts.tolist())) > 1:
        dist.fail(
            UserError(
                f"the processes disagree on the step to resume from ({starts.tolist()} by "
                f"rank) after the broadcast from rank 0; check {args.model_dir}"
            )
        )
    remaining = plan.total_steps - start
    steps = remaining if args.run_iter == -1 else min(args.run_iter, remaining)
    if benchmark and steps <= args.warmup_steps:
        dist.fail(
            UserError(
                f"the benchmark runs {steps} steps, not more than --warmup_steps "
                f"({args.warmup_steps}): raise --num_iter or lower --warmup_steps"
            )
        )
    if steps <= 0:
        _say(
            dist,
            f"nothing to train: {args.model_dir} is already at step {start} of {plan.total_steps}",
        )
        return model, {"steps": 0, "stopped": False}
    with dist.agree_on_errors():
        trainer = Trainer(model, optimizer, schedule, dist, logger, args, plan, keeper)
        dataset = inputs.training_dataset(args, dist, seed, start_step=start)
    targets_fn = inputs.make_targets_fn(args, seed)
    result = trainer.run(
        dataset, targets_fn, steps, benchmark_warmup=args.warmup_steps if benchmark else None
    )
    throughput = {k: v for k, v in result.items() if k.startswith("train_")}
    if throughput:
        logger.log((), throughput)
    _dump_weights(dist, model.variables + state)
    # Batch-norm moving statistics are each rank's own (as in the original, without a
    # synchronised batch norm); rank 0's are the ones saved. Evaluate and export that model.
    dist.broadcast_variables(model.non_trainable_variables)
    return model, result


def _evaluate(args, dist, logger, model):
    with dist.agree_on_errors():
        total = data_utils.count_records(data_utils.list_files(args.data_dir, "validation"))
        dataset = inputs.evaluation_dataset(args, dist)
    metrics = evaluation.evaluate(model, dataset, dist, args.xla, total)
    logger.log((), metrics)
    return metrics


def _export(args, dist, model):
    if not args.export_dir:
        return
    with dist.agree_on_errors():
        if dist.is_chief:
            path = export_saved_model(
                model, args.export_dir, inputs.image_size(args), normalize=args.dali
            )
            print(f"exported SavedModel to {path}", flush=True)


def mode_train(args, dist, logger, seed):
    model, result = _train(args, dist, logger, seed)
    if not result["stopped"]:
        _export(args, dist, model)


def mode_train_and_evaluate(args, dist, logger, seed):
    model, result = _train(args, dist, logger, seed)
    if result["stopped"]:
        return
    _evaluate(args, dist, logger, model)
    _export(args, dist, model)


def mode_evaluate(args, dist, logger, seed):
    del seed
    with dist.agree_on_errors():
        model = _build(args)
        if dist.is_chief:  # the other ranks get the weights by broadcast
            config = checkpoints.model_config(args)
            path = checkpoints.restore_model_only(model, args.model_dir, config)
            _say(dist, f"evaluating {path}")
    dist.broadcast_variables(model.variables)
    _evaluate(args, dist, logger, model)
    _export(args, dist, model)


def mode_training_benchmark(args, dist, logger, seed):
    _train(args, dist, logger, seed, benchmark=True)


def mode_inference_benchmark(args, dist, logger, seed):
    del seed, dist
    model = _build(args)
    if checkpoints.resolve_checkpoint(args.model_dir):
        checkpoints.restore_model_only(model, args.model_dir, checkpoints.model_config(args))
    steps = args.num_iter
    if args.data_dir and args.iter_unit == "epoch":
        records = data_utils.count_records(data_utils.list_files(args.data_dir, "validation"))
        steps = -(-records // args.batch_size) * args.num_iter
    if steps <= args.warmup_steps:
        raise UserError(
            f"the benchmark runs {steps} batches, not more than --warmup_steps "
            f"({args.warmup_steps}): raise --num_iter or lower --warmup_steps"
        )
    metrics = evaluation.inference_benchmark(
        model, inputs.inference_dataset(args), steps, args.warmup_steps, args.batch_size, args.xla
    )
    logger.log((), metrics)


def mode_predict(args, dist, logger, seed):
    del seed, dist
    paths = list_images(args.to_predict)
    model = _build(args)
    checkpoints.restore_model_only(model, args.model_dir, checkpoints.model_config(args))
    results = predict(model, paths, args.image_size, args.batch_size, args.num_classes)
    print_predictions(results)
    path = write_predictions(results, args.results_dir)
    print(f"wrote {len(results)} predictions to {path}", flush=True)
    logger.log((), {"predicted_images": len(results)})


MODES = {
    "train": mode_train,
    "train_and_evaluate": mode_train_and_evaluate,
    "evaluate": mode_evaluate,
    "predict": mode_predict,
    "training_benchmark": mode_training_benchmark,
    "inference_benchmark": mode_inference_benchmark,
}


def _join_processes(args):
    """The process group for this run, or None for a process that has nothing to do."""
    launched = launcher.launched_world_size()
    if args.mode in SINGLE_PROCESS_MODES and launched > 1:
        if launcher.launched_rank() != 0:
            return None
        print(
            f"--mode {args.mode} runs on one process: rank 0 runs it, the other "
            f"{launched - 1} process(es) exit now",
            flush=True,
        )
        return hvd_utils.SingleProcess()
    return hvd_utils.init()


def run(args):
    dist = _join_processes(args)
    if dist is None:
        return 0
    with dist.failures_as_errors():
        return _run(args, dist)


def _run(args, dist):
    with dist.agree_on_errors():
        environment.configure_devices(dist, args.gpu_id, args.dali, args.gpu_memory_fraction)
        environment.configure_precision(args.amp, warn=dist.is_chief)
        seed = environment.configure_seed(args.seed, dist.rank)
        logger = Logger(args.results_dir, args.log_filename, enabled=dist.is_chief)
    try:
        logger.log_parameters({**vars(args), "num_processes": dist.size})
        for metric, unit in METRIC_UNITS.items():
            logger.metadata(metric, {"unit": unit} if unit else {})
        MODES[args.mode](args, dist, logger, seed)
    finally:
        logger.close()
        sys.stdout.flush()
    return 0
