"""The six modes of `main.py`: train, train_and_evaluate, evaluate, predict and the two
benchmarks. `run(args)` sets up the process, then calls the mode's function.

Under a launcher (mpiexec, horovodrun) with several processes, `utils/distributed.py` joins
them with Horovod: rank 0 alone restores checkpoints, logs, writes TensorBoard, checkpoints
and exports; the model, optimizer and loss-scale state are broadcast from it, so every rank
starts from rank 0's step and weights even if only rank 0 sees the checkpoint files.
Phases whose errors may differ between ranks end at `dist.agree_on_errors()`, so a mistake
on any rank ends the whole job with one line. `inference_benchmark` and `predict` run on
rank 0 alone; the other processes exit at once, without starting Horovod.
"""

import functools
import sys

from model import ModelConfig, build
from runtime import checkpoints, environment, evaluation, inputs, memory, outputs, signals
from runtime.export import export_saved_model
from runtime.predict import list_images, predict, print_predictions, write_predictions
from runtime.training import StopRequest, Trainer
from utils import data_utils, distributed, modes
from utils.core import tf_compat
from utils.core.errors import UserError
from utils.distributed import launcher
from utils.learning_rate import WarmupDecaySchedule
from utils.logs.dllogger_compat import Logger
from utils.optimizers import build_optimizer
from utils.precision import loss_scaling

METRIC_UNITS = {
    "imgs_per_sec": "img/s",
    "train_throughput": "img/s",
    "train_throughput_per_rank": "img/s",
    "eval_throughput": "img/s",
    "train_compute_throughput": "img/s",
    "learning_rate": None,
    "top1_accuracy": None,
    "top5_accuracy": None,
    **{f"eval_latency_{stat}": "ms" for stat in ("avg", "p90", "p95", "p99")},
}


def _say(dist, message):
    if dist.is_chief:
        print(message, flush=True)


def _make_optimizer(args, dist, plan, model):
    schedule = WarmupDecaySchedule(
        lr_init=args.lr_init,
        global_batch_size=args.batch_size * dist.size,
        steps_per_epoch=plan.steps_per_epoch,
        total_steps=plan.decay_steps,
        lr_warmup_epochs=args.lr_warmup_epochs,
        cosine=args.cosine_lr,
    )
    optimizer = build_optimizer(schedule, args.momentum, loss_scaling(args), args.static_loss_scale)
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
        state += tf_compat.loss_scale_state(optimizer)
    return state


def _restore(args, config, dist, keeper, model, optimizer):
    """Rank 0's part of resuming: the newest checkpoint in --model_dir, else fine-tune
    weights if asked; the other ranks get the result by broadcast."""
    restored = keeper.restore_latest()
    if restored:
        _say(dist, f"resuming from {restored} at step {int(optimizer.iterations.numpy())}")
    elif args.finetune_checkpoint:
        checkpoints.load_finetune_weights(
            model,
            args.finetune_checkpoint,
            config,
            build,
            log=functools.partial(_say, dist),
        )


def _train(args, config, dist, logger, seed, benchmark=False):
    keeper = None
    with dist.agree_on_errors():
        plan = inputs.plan_steps(args, dist)
        model = build(config)
        schedule, optimizer = _make_optimizer(args, dist, plan, model)
        if not benchmark:
            keeper = checkpoints.CheckpointKeeper(
                args.model_dir,
                model,
                optimizer,
                config,
                enabled=dist.is_chief,
            )
            if dist.is_chief:
                _restore(args, config, dist, keeper, model, optimizer)
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
    steps = inputs.steps_this_run(args, plan, start)
    too_short = modes.benchmark_too_short(steps, args.warmup_steps, args.mode)
    if benchmark and too_short:
        dist.fail(UserError(too_short))
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
    # Batch-norm moving statistics are each rank's own (as in the original, without a
    # synchronised batch norm); rank 0's are the ones saved. Evaluate and export that model.
    dist.broadcast_variables(model.non_trainable_variables)
    return model, result


def _evaluate(args, dist, logger, model):
    """Score `model` and log the original's keys. The evaluation after training and a
    plain `--mode evaluate` see every validation image once; otherwise (and always in
    inference_benchmark) --num_iter/--iter_unit fixed-size batches, as the original."""
    with dist.agree_on_errors():
        if inputs.counts_whole_set(args):
            files = data_utils.list_files(args.data_dir, "validation")
            steps, total = None, data_utils.count_records(files)
            dataset = inputs.evaluation_dataset(args, dist)
        else:
            steps = total = inputs.evaluation_steps(args, dist)
            too_short = modes.benchmark_too_short(steps, args.warmup_steps, args.mode, "batches")
            if too_short and modes.MODES[args.mode].benchmark:
                raise UserError(too_short)
            dataset = inputs.fixed_batches_dataset(args, dist)
    metrics = evaluation.evaluate(
        model,
        dataset,
        dist,
        args.xla,
        warmup_steps=args.warmup_steps,
        steps=steps,
        accuracy=bool(args.data_dir),
        total=total,
    )
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


def mode_train(args, config, dist, logger, seed):
    model, result = _train(args, config, dist, logger, seed)
    if not result["stopped"]:
        _export(args, dist, model)


def mode_train_and_evaluate(args, config, dist, logger, seed):
    inputs.check_validation_data(args)  # a broken validation set fails now, not after training
    model, result = _train(args, config, dist, logger, seed)
    if result["stopped"]:
        return
    _evaluate(args, dist, logger, model)
    _export(args, dist, model)


def mode_evaluate(args, config, dist, logger, seed):
    del seed
    with dist.agree_on_errors():
        model = build(config)
        if dist.is_chief:  # the other ranks get the weights by broadcast
            path = checkpoints.restore_model_only(model, args.model_dir, config)
            _say(dist, f"evaluating {path}")
    dist.broadcast_variables(model.variables)
    _evaluate(args, dist, logger, model)
    _export(args, dist, model)


def mode_training_benchmark(args, config, dist, logger, seed):
    _train(args, config, dist, logger, seed, benchmark=True)


def mode_inference_benchmark(args, config, dist, logger, seed):
    del seed
    model = build(config)
    if checkpoints.resolve_checkpoint(args.model_dir):
        checkpoints.restore_model_only(model, args.model_dir, config)
    _evaluate(args, dist, logger, model)
    _export(args, dist, model)


def mode_predict(args, config, dist, logger, seed):
    del seed, dist
    paths = list_images(args.to_predict)
    model = build(config)
    checkpoints.restore_model_only(model, args.model_dir, config)
    results = predict(
        model, paths, args.image_size, args.batch_size, args.num_classes, xla=args.xla
    )
    print_predictions(results)
    path = write_predictions(results, args.results_dir)
    predicted = sum("top5" in r for r in results)  # unreadable images have an error entry
    print(f"wrote {predicted} predictions ({len(results) - predicted} unreadable) to {path}")
    logger.log((), {"predicted_images": predicted, "unreadable_images": len(results) - predicted})


RUNNERS = {
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
    if modes.MODES[args.mode].single_process and launched > 1:
        if launcher.launched_rank() != 0:
            return None
        print(
            f"--mode {args.mode} runs on one process: rank 0 runs it, the other "
            f"{launched - 1} process(es) exit now",
            flush=True,
        )
        return distributed.SingleProcess()
    return distributed.init(before_start=functools.partial(_configure_devices, args))


def _configure_devices(args, dist):
    environment.configure_devices(
        dist, args.gpu_id, args.dali, args.gpu_memory_fraction, cpu=args.cpu
    )


def run(args):
    dist = _join_processes(args)
    if dist is None:
        return 0
    signals.install()  # outside training: SIGTERM/SIGINT end with one line
    with dist.failures_as_errors():
        code = _run(args, dist)
    return StopRequest.exit_code or code  # 130 after a Ctrl-C stop that saved


def _run(args, dist):
    if args.seed is not None:
        _say(dist, environment.SEED_NOTE.format(seed=args.seed))
    with dist.agree_on_errors():
        lock = outputs.prepare(args, dist.is_chief)  # writable outputs, lock, stale temps
    try:
        return _run_locked(args, dist)
    finally:
        if lock is not None:  # also released at exit, should the run end without this
            lock.release()


def _run_locked(args, dist):
    with dist.agree_on_errors():
        if not dist.devices_ready:  # tf.distribute picks them before TensorFlow starts
            _configure_devices(args, dist)
        memory.guard(args, dist, inputs.image_size(args))
        args.amp_dtype = environment.configure_precision(
            args.amp, args.amp_dtype, args.static_loss_scale, warn=dist.is_chief
        )
        seed = environment.configure_seed(args.seed, dist.rank)
        logger = Logger(args.results_dir, args.log_filename, enabled=dist.is_chief)
    try:
        logger.log_parameters({**vars(args), "num_processes": dist.size})
        for metric, unit in METRIC_UNITS.items():
            logger.metadata(metric, {"unit": unit} if unit else {})
        config = ModelConfig.from_args(args, **checkpoints.recorded_fields(args))
        RUNNERS[args.mode](args, config, dist, logger, seed)
    finally:
        logger.close()
        sys.stdout.flush()
    return 0
