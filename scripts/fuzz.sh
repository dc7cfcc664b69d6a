#!/usr/bin/env bash
# Long fuzz runs of the hostile suite (test/hostile/README.md).
#   scripts/fuzz.sh [RUNS] [SEED] [TARGET]   TARGET: walker | messages | all (default)
# Example: scripts/fuzz.sh 200000 12345 walker
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-20000}
SEED=${2:-$(( RANDOM * 32768 + RANDOM ))}
TARGET=${3:-all}
npx tsc -p tsconfig.json
exec node dist/bench/fuzz.js --target "$TARGET" --runs "$RUNS" --seed "$SEED" ${SAVE_CORPUS:+--save-corpus}
