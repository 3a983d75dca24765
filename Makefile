# Each target installs requirements.txt into .venv first (a no-op when already there).
PY := .venv/bin/python

.venv/.installed: requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -r requirements.txt
	touch $@

quickstart: .venv/.installed
	$(PY) -m launch.train --config=experiments/quickstart.py --workdir=runs/quickstart

# The default suite, then the slow one (pytest.ini: the `slow` marker).
test: .venv/.installed
	$(PY) -m pytest
	$(PY) -m pytest -m slow

.PHONY: quickstart test
