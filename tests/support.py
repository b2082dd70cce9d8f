"""What several test files share: running main.py, reading its log, the ops of a graph."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAKE_QUANT_OPS = {"FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxVarsPerChannel"}
QDQ_OPS = {"QuantizeAndDequantizeV2", "QuantizeAndDequantizeV3", "QuantizeAndDequantizeV4"}


def run_main(*argv, timeout=900, check=True):
    """main.py in a subprocess; with `check`, a non-zero exit fails with its output."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
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
