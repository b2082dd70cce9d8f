"""What several test files share: running main.py, reading its log, the ops of a graph."""

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAKE_QUANT_OPS = {"FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxVarsPerChannel"}
QDQ_OPS = {"QuantizeAndDequantizeV2", "QuantizeAndDequantizeV3", "QuantizeAndDequantizeV4"}


def run_main(*argv, check=True):
    """main.py's `main(argv)` in this process, as `python main.py ARGV` would run it: the
    same exit code (argparse's 2, a user error's 1, 130 after Ctrl-C, 1 with the traceback
    on stderr for an uncaught exception), its stdout and stderr (the project's warnings
    included), from the state of a fresh process and with that state put back afterwards
    (tests/process_state.py). Returns a `subprocess.CompletedProcess`; with `check`, a
    non-zero exit fails with its output. Use `run_main_process` where the process
    boundary is what is tested (docs/testing.md)."""
    import main
    from tests import process_state

    argv = [str(arg) for arg in argv]
    before, randomness = process_state.snapshot(), process_state.random_states()
    out, err = io.StringIO(), io.StringIO()
    # Python's last-resort handler prints the project's warnings on stderr in a fresh
    # process; under pytest the root logger has handlers, so add the same one for the run.
    warnings_to_stderr = logging.StreamHandler(err)
    warnings_to_stderr.setLevel(logging.WARNING)
    _census("count_in_process_run")
    try:
        process_state.fresh_process()
        os.chdir(REPO)
        logging.getLogger().addHandler(warnings_to_stderr)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main.main(argv)
            except SystemExit as stop:
                code = stop.code
                if code is not None and not isinstance(code, int):
                    print(code, file=sys.stderr)
                    code = 1
            except Exception:  # what the interpreter does with an uncaught exception
                traceback.print_exc()
                code = 1
    finally:
        process_state.restore(before, randomness)
    proc = subprocess.CompletedProcess(
        ["main.py", *argv], code or 0, out.getvalue(), err.getvalue()
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"main.py failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _census(name):
    census = sys.modules.get("tests.process_census")  # loaded with -p tests.process_census
    if census is not None:
        getattr(census, name)()


def run_main_process(*argv, timeout=900, check=True, env=None):
    """main.py in a fresh interpreter (a subprocess); with `check`, a non-zero exit fails
    with its output. For tests of what only a process shows: signals, exit codes of a new
    interpreter, variables read when TensorFlow starts."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    proc = subprocess.run(
        [sys.executable, str(REPO / "main.py"), *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"main.py failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


LOG_KEYS = {"timestamp", "datetime", "elapsedtime", "type", "step", "data"}


def read_log(results_dir, name="log.json"):
    """The records of a run's DLLogger file; every line must be `DLLL {json}`."""
    records = []
    for line in Path(results_dir, name).read_text().splitlines():
        assert line.startswith("DLLL {"), line
        record = json.loads(line[len("DLLL ") :])
        if record["type"] == "LOG":
            assert set(record) >= LOG_KEYS, record
        records.append(record)
    return records


def logged(records, key):
    """Every value of `key` in the LOG records, in order."""
    return [r["data"][key] for r in records if r["type"] == "LOG" and key in r.get("data", {})]


def logged_values(results_dir, key, name="log.json"):
    """Every value of `key` in the LOG records of a run's DLLogger file, in order."""
    return logged(read_log(results_dir, name), key)


def reachable_op_types(graph_def):
    """Op types of a GraphDef's nodes and of every library function they (transitively) call."""
    library = {f.signature.name: f for f in graph_def.library.function}
    types, seen = set(), set()

    def visit(nodes):
        for node in nodes:
            types.add(node.op)
            names = [node.op] if node.op in library else []
            for attr in node.attr.values():
                if attr.func.name:
                    names.append(attr.func.name)
                names.extend(f.name for f in attr.list.func)
            for name in names:
                if name in library and name not in seen:
                    seen.add(name)
                    visit(library[name].node_def)

    visit(graph_def.node)
    return types
