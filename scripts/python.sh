# shellcheck shell=bash
# Sourced by the shell scripts that run this repository's Python code: rnxt_python REPO
# prints the interpreter to use: $PYTHON when set, else REPO/.venv/bin/python when it
# exists (made by `make setup`), else python3 from PATH (the Docker image's).
rnxt_python() {
    if [[ -n ${PYTHON:-} ]]; then
        echo "$PYTHON"
    elif [[ -x $1/.venv/bin/python ]]; then
        echo "$1/.venv/bin/python"
    else
        echo python3
    fi
}
