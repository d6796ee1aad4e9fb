#!/usr/bin/env bash
# Builds the peer-baseline environment .venv-peers (repo root) for benchmarks/peers/*.py.
# Idempotent: a marker file records what was installed; re-running skips all work when it matches.
#   bash benchmarks/peers/setup.sh            # build (or no-op)
#   FORCE=1 bash benchmarks/peers/setup.sh    # rebuild from scratch
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$ROOT/.venv-peers}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
REQS="$HERE/requirements.txt"
MARKER="$VENV/.peers-installed"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# The marker holds the torch spec and a hash of requirements.txt: editing either triggers a reinstall.
want="torch_spec=$TORCH_SPEC reqs_sha256=$(sha256sum "$REQS" | cut -d' ' -f1)"

if [[ "${FORCE:-0}" == "1" ]]; then
    rm -rf "$VENV"
fi
if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$want" ]]; then
    echo "peers: $VENV already set up ($want); nothing to do (FORCE=1 rebuilds)"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "peers: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# Keep the whole venv out of git without touching the repo's .gitignore.
echo '*' > "$VENV/.gitignore"

# torch first, then pin exactly that build, so no later dependency can swap it for a CUDA one.
echo "peers: installing $TORCH_SPEC"
"${PIP[@]}" install --quiet $TORCH_SPEC
"$VENV/bin/python" -c 'import torch; print(f"torch=={torch.__version__}")' > "$VENV/constraints.txt"
echo "peers: constraints: $(cat "$VENV/constraints.txt")"

echo "peers: installing $REQS"
"${PIP[@]}" install --quiet -c "$VENV/constraints.txt" -r "$REQS"

# Smoke test: the modules the runner uses import, and torch is still the pinned build.
"$VENV/bin/python" - <<'PY'
import numpy as np
# recbole's Config re-creates np.float & co from names numpy 2 removed; see recbole_sasrec.py shims.
for old, new in (("float_", "float64"), ("complex_", "complex128"), ("unicode_", "str_")):
    if not hasattr(np, old):
        setattr(np, old, getattr(np, new))
import torch, recbole
import recbole.config, recbole.data, recbole.model.sequential_recommender, recbole.trainer  # noqa
print(f"peers: ok recbole {recbole.__version__}, torch {torch.__version__}, numpy {np.__version__}")
PY
"${PIP[@]}" freeze > "$VENV/freeze.txt"
echo "$want" > "$MARKER"
echo "peers: done; pip freeze saved to $VENV/freeze.txt"
