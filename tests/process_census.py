"""A pytest plugin that counts the processes the tests start, by kind and by test file.

`python -m pytest tests -p tests.process_census` prints, at the end, how many `main.py`
processes, launcher jobs (mpiexec, horovodrun), other Python processes and other
commands each test file started, and how many in-process `main.py` runs it made (with
pytest-xdist, each worker writes its counts to a folder the controller reads).
docs/testing.md quotes its table; nothing else uses it.
"""

import collections
import json
import os
import subprocess
import tempfile

import pytest

_counts = collections.defaultdict(collections.Counter)
_current = {"file": "(collection)"}


def _kind(args):
    words = [os.path.basename(str(word)) for word in (args if isinstance(args, list) else [args])]
    if words and words[0] in ("mpiexec", "mpirun", "horovodrun"):
        return "launcher"
    if "main.py" in words:
        return "main.py"
    if words and words[0].startswith("python"):
        return "python"
    return "other"


def count_in_process_run():
    """Called by tests.support.run_main for every in-process main.py run."""
    _counts[_current["file"]]["in-process"] += 1


_FOLDER = "RNXT_CENSUS_DIR"


def pytest_configure(config):
    del config
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ[_FOLDER] = tempfile.mkdtemp(prefix="census-")  # the workers inherit it
    real_init = subprocess.Popen.__init__

    def counting_init(self, args, *rest, **kwargs):
        _counts[_current["file"]][_kind(args)] += 1
        real_init(self, args, *rest, **kwargs)

    subprocess.Popen.__init__ = counting_init


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    del nextitem
    _current["file"] = item.nodeid.split("::")[0]
    yield


def pytest_sessionfinish(session):
    del session
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and os.environ.get(_FOLDER):
        with open(os.path.join(os.environ[_FOLDER], f"{worker}.json"), "w") as handle:
            json.dump(_counts, handle)


def pytest_terminal_summary(terminalreporter):
    kinds = ("in-process", "main.py", "launcher", "python", "other")
    folder = os.environ.get(_FOLDER, "")
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        with open(os.path.join(folder, name)) as handle:
            for file, counts in json.load(handle).items():
                _counts[file].update(counts)
    write = terminalreporter.write_line
    write("process census: " + " | ".join(("file",) + kinds))
    total = collections.Counter()
    for file in sorted(_counts):
        total.update(_counts[file])
        write(f"| {file} | " + " | ".join(str(_counts[file][k]) for k in kinds) + " |")
    write("| all | " + " | ".join(str(total[k]) for k in kinds) + " |")
