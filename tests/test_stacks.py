"""The two runtime stacks: which one a Python version gets (scripts/choose_stack.py, with
the version faked), how scripts/setup_env.sh uses that choice, and that the pins and
pyproject.toml agree with it. Needs no TensorFlow, except the last test, which checks on
an installed current stack that tf.keras is the tf_keras package.
"""

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import choose_stack  # noqa: E402

CHOOSER = REPO / "scripts" / "choose_stack.py"
SETUP = REPO / "scripts" / "setup_env.sh"


def _chooser(*args, stack=None):
    env = {k: v for k, v in os.environ.items() if k != "STACK"}
    if stack is not None:
        env["STACK"] = stack
    return subprocess.run(
        [sys.executable, str(CHOOSER), *args], capture_output=True, text=True, env=env
    )


@pytest.mark.parametrize(
    "version, forced, expected",
    [
        ("3.9", "", ("classic", ".venv")),
        ("3.10", "", ("classic", ".venv")),
        ("3.11", "", ("classic", ".venv")),
        ("3.12", "", ("current", ".venv")),
        ("3.13", "", ("current", ".venv")),
        ("3.10", "current", ("current", ".venv-current")),
        ("3.11", "current", ("current", ".venv-current")),
        ("3.11.7", "classic", ("classic", ".venv")),
        ("3.12", "current", ("current", ".venv")),
    ],
)
def test_choice_by_python_version(version, forced, expected):
    assert choose_stack.choose(choose_stack.parse_version(version), forced) == expected
    proc = _chooser("--python-version", version, stack=forced)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == list(expected)


@pytest.mark.parametrize(
    "version, forced, message",
    [
        ("3.8", "", "this project needs Python 3.9-3.13, not 3.8"),
        ("3.14", "", "this project needs Python 3.9-3.13, not 3.14"),
        ("3.12", "classic", "the classic stack needs Python 3.9-3.11, not 3.12"),
        ("3.9", "current", "the current stack needs Python 3.10-3.13, not 3.9"),
        ("3.11", "newest", "STACK='newest': choose classic or current"),
        ("three", "", "--python-version 'three': expected MAJOR.MINOR"),
    ],
)
def test_unsupported_choice_is_one_line_and_status_2(version, forced, message):
    proc = _chooser("--python-version", version, stack=forced)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == f"choose_stack.py: error: {message}\n"


def test_default_is_the_running_interpreter():
    proc = _chooser()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == list(choose_stack.choose(sys.version_info[:2]))


def _fake_python(tmp_path, version):
    """A PYTHON for setup_env.sh that runs the chooser as if it were Python `version`."""
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@" --python-version {version}\n')
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize(
    "version, stack, message",
    [
        ("3.12", "classic", "the classic stack needs Python 3.9-3.11, not 3.12"),
        ("3.11", "bogus", "STACK='bogus': choose classic or current"),
    ],
)
def test_setup_refuses_an_unsupported_stack_before_installing(tmp_path, version, stack, message):
    venv = tmp_path / "venv"
    env = {**os.environ, "STACK": stack, "VENV": str(venv)}
    env["PYTHON"] = str(_fake_python(tmp_path, version))
    proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert proc.stderr == f"choose_stack.py: error: {message}\n"
    assert not venv.exists()


def _pins(name):
    lines = (REPO / name).read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def test_pins_of_each_stack():
    classic, current = _pins("requirements.txt"), _pins("requirements-current.txt")
    assert classic["tensorflow"] == "2.15.1" and "horovod" in classic
    assert classic["numpy"].startswith("1.")
    assert current["tensorflow"] == current["tf-keras"] == "2.21.0"
    assert current["numpy"].startswith("2.") and "horovod" not in current
    # setup_env.sh installs these by name from the stack's file.
    script = SETUP.read_text()
    only_current = {"tf-keras", "tensorboard", "mpi4py"}
    for name in set(re.findall(r"\$\(pin ([\w-]+)\)", script)) - only_current - {"horovod"}:
        assert name in classic and name in current, name
    assert only_current <= set(current)


def test_pyproject_admits_both_stacks():
    text = (REPO / "pyproject.toml").read_text()
    spec = re.search(r'^requires-python = "(.*)"$', text, re.M).group(1)
    assert spec == ">=3.9,<3.14"
    for low, high in choose_stack.STACKS.values():
        assert low >= (3, 9) and high < (3, 14)


@pytest.mark.parametrize("variable", ["set", "from the venv"])
def test_legacy_keras_switch_on_the_current_stack(variable):
    """With tf_keras installed, TF_USE_LEGACY_KERAS=1 makes tf.keras Keras 2 (tf_keras);
    setup_env.sh's .pth file sets it for every Python of a current-stack venv."""
    probe = "import importlib.util as u, sys; sys.exit(u.find_spec('tf_keras') is None)"
    if subprocess.run([sys.executable, "-c", probe]).returncode:
        pytest.skip("tf_keras is not installed (classic stack): nothing to switch")
    code = (
        "import tensorflow as tf, tf_keras; "
        "assert tf.keras.__name__.startswith('tf_keras'), tf.keras.__name__; "
        "assert tf.keras.layers.Dense is tf_keras.layers.Dense; "
        "print(tf.__version__, tf_keras.__version__)"
    )
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    if variable != "set":
        pth = Path(sysconfig.get_paths()["purelib"]) / "rnxt_legacy_keras.pth"
        if not pth.exists():
            pytest.skip("not a venv made by scripts/setup_env.sh")
        del env["TF_USE_LEGACY_KERAS"]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[1].startswith("2."), proc.stdout


def _fake_interpreter(path, reports):
    """An executable at `path` that answers choose_stack's version probe with `reports`
    ("3 13"), or fails like a pyenv shim of an unselected version (reports=None)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = f"echo {reports}" if reports else 'echo "pyenv: $0: command not found" >&2; exit 127'
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_make_test_finds_the_newest_python_of_each_stack(tmp_path, monkeypatch):
    bin_dir, pyenv = tmp_path / "bin", tmp_path / "pyenv"
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("PYENV_ROOT", str(pyenv))
    host = "/usr/bin/python3.11"
    # Only a shim on PATH that does not run, and pyenv's 3.12.1 and 3.12.9: 3.12.9 it is.
    _fake_interpreter(bin_dir / "python3.13", None)
    _fake_interpreter(pyenv / "versions" / "3.12.1" / "bin" / "python3", "3 12")
    newest = _fake_interpreter(pyenv / "versions" / "3.12.9" / "bin" / "python3", "3 12")
    python, said = choose_stack.find_python("current", host, (3, 11))
    assert python == newest and said == f"current stack: Python 3.12 ({newest})"
    # A working python3.13 on PATH wins.
    on_path = _fake_interpreter(bin_dir / "python3.13", "3 13")
    assert choose_stack.find_python("current", host, (3, 11))[0] == on_path
    # The classic stack stays on a 3.11 host's own Python.
    assert choose_stack.find_python("classic", host, (3, 11)) == (
        host,
        f"classic stack: the host's Python 3.11 ({host})",
    )
    # Nothing newer: the host's Python, and the line says so.
    (bin_dir / "python3.13").unlink()
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "none"))
    python, said = choose_stack.find_python("current", host, (3, 11))
    assert python == host and said.endswith("no newer Python 3.12-3.13 was found")
    # A 3.13 host has no classic Python of its own: pyenv's 3.11, else a one-line error.
    monkeypatch.setenv("PYENV_ROOT", str(pyenv))
    old = _fake_interpreter(pyenv / "versions" / "3.11.7" / "bin" / "python3", "3 11")
    assert choose_stack.find_python("classic", "/usr/bin/python3.13", (3, 13))[0] == old
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "none"))
    with pytest.raises(ValueError, match="the classic stack needs Python 3.9-3.11: none found"):
        choose_stack.find_python("classic", "/usr/bin/python3.13", (3, 13))


def test_find_python_prints_stack_venv_and_interpreter():
    proc = _chooser("--find-python", stack="current")
    assert proc.returncode == 0, proc.stderr
    stack, venv, python = proc.stdout.split()
    assert stack == "current" and Path(python).exists()
    assert proc.stderr.startswith("current stack: ") and proc.stderr.count("\n") == 1
    assert venv == choose_stack.choose(sys.version_info[:2], "current")[1]


def test_setup_leaves_a_venv_of_another_python_it_did_not_make(tmp_path):
    venv = tmp_path / "venv"
    _fake_interpreter(venv / "bin" / "python", "3 9")  # prints "3 9" as its version too
    (venv / "mine.txt").write_text("user file")
    env = {**os.environ, "STACK": "", "VENV": str(venv), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, env=env)
    assert proc.returncode == 1, proc.stderr
    version = sys.version.split()[0]
    assert f"holds a Python other than {version} and was not made by this script" in proc.stderr
    assert (venv / "mine.txt").read_text() == "user file"
