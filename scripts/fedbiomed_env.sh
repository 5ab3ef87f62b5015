#!/usr/bin/env bash
# Build a scratch environment with the stock Fed-BioMed 6.4.1 from PyPI, for the interop tests and
# benchmark only (never a dependency of fedpipe). Usage: bash scripts/fedbiomed_env.sh [DIR]
# fedbiomed is installed with --no-deps and its imports' needs are listed here, all under a
# torch==2.13.0 constraint so that nothing replaces the CPU build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV="${1:-.fbm-env}"
ENV="$(cd "$(dirname "$ENV")" 2>/dev/null && pwd)/$(basename "$ENV")" || ENV="$PWD/$ENV"
# Importing fedbiomed.researcher creates a component in the working directory unless told where:
# run the checks in a throw-away directory.
CHECK_DIR="$(mktemp -d)"
trap 'rm -rf "$CHECK_DIR"' EXIT
check() {
  (cd "$CHECK_DIR" && FBM_RESEARCHER_COMPONENT_ROOT="$CHECK_DIR/researcher" "$ENV/bin/python" -c '
import importlib.metadata as m
assert m.version("fedbiomed") == "6.4.1" and m.version("pyOpenSSL").startswith("23.1.")
import fedbiomed.researcher.federated_workflows, fedbiomed.node.node
')
}
if [ -x "$ENV/bin/python" ] && check 2>/dev/null; then
  exit 0
fi
python3 -m venv "$ENV"
CONSTRAINTS="$CHECK_DIR/constraints.txt"
echo "torch==2.13.0" >"$CONSTRAINTS"
"$ENV/bin/python" -m pip install -q --upgrade pip
"$ENV/bin/python" -m pip install -q torch==2.13.0
# The versions fedbiomed 6.4.1 itself requires (its wheel's metadata), where they matter: pyOpenSSL
# 26 lacks the X509Extension it uses for a certificate made for an IP address.
"$ENV/bin/python" -m pip install -q -c "$CONSTRAINTS" \
  "grpcio~=1.82.0" "grpcio-tools~=1.82.0" protobuf "declearn~=2.8.0" "gmpy2~=2.1.0" "tinydb~=4.7.1" \
  "python-minifier~=2.11" "cryptography~=40.0" "pyOpenSSL~=23.1.1" "packaging~=24.1" "psutil~=6.0.0" \
  "tabulate>=0.9.0,<0.10.0" termcolor fire "requests~=2.29" pandas scikit-learn safetensors tqdm \
  "persist-queue>=0.5.1,<0.6.0" "validators>=0.20.0,<0.21.0" "pathvalidate~=3.0.0" pillow "polars~=1.32.0" \
  "nibabel~=5.3" opacus "tensorboard~=2.18.0" "pygments~=2.18.0" "torchvision==0.28.0" "msgpack~=1.0"
"$ENV/bin/python" -m pip install -q --no-deps "fedbiomed==6.4.1"
# PyPI's torchvision 0.28.0 is a CUDA build: its C ops cannot load beside the CPU torch, and its
# import then fails on the two op schemas it registers without checking for them (nms, qnms).
# Defining those two schemas before torchvision is imported lets it import without its C ops
# (the detection ops stay unavailable; tabular plans never use them).
SITE="$("$ENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cat >"$SITE/_torchvision_cpu_schemas.py" <<'PY'
"""Define torchvision's nms/qnms schemas just before torchvision is first imported."""
import importlib.abc
import sys

_LIB = None


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        global _LIB
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        _LIB = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            _LIB.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        return None


sys.meta_path.insert(0, _Hook())
PY
echo "import _torchvision_cpu_schemas" >"$SITE/_torchvision_cpu_schemas.pth"
check
