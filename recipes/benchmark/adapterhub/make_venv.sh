#!/usr/bin/env bash
# A separate Python for speed.py's AdapterHub peer (worker.py): adapters 1.3 pins transformers ~= 4.57.6, while this
# project needs transformers 5, so AdapterHub cannot live in the project's environment.
#   bash recipes/benchmark/adapterhub/make_venv.sh [VENV]      # default /tmp/venv-adapterhub
#   python recipes/benchmark/speed.py --adapterhub-python VENV/bin/python
set -euo pipefail
VENV="${1:-/tmp/venv-adapterhub}"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0                        # the same torch as the project's (CPU or CUDA build)
"$VENV/bin/pip" install -q "transformers==4.57.6" "adapters==1.3.0"
"$VENV/bin/python" -c "import adapters, torch, transformers; print('AdapterHub Python ready:', adapters.__version__, \
transformers.__version__, torch.__version__)"
echo "$VENV/bin/python"
