#!/usr/bin/env bash
# backup_cells.sh: the manual's per-cell packing, over cellvault.
#
#   ./deploy/scripts/backup_cells.sh            every cell of BACKUP_CELLS
#   ./deploy/scripts/backup_cells.sh crm iam    only these cells
#
# One archive per cell, cell_<cell>_<YYYYMMDD_HHMMSS>.tar.zst (.tar.gz with
# BACKUP_CODEC=gzip), holding meta.json (with backed_at) and the cell's data,
# stored on every target of BACKUP_TARGETS and verified. backup_runner.sh is
# the scheduled entry point; this one takes cells by name and does not prune.
set -euo pipefail
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
cv=("${CELLVAULT:-cellvault}")
if [[ -n ${BACKUP_CONFIG:-} || -f $here/backup_config.env ]]; then
    cv+=(--env-file "$(realpath -m -- "${BACKUP_CONFIG:-$here/backup_config.env}")")
fi
cd -- "$here/../.."
args=()
for cell in "$@"; do args+=(--cell "$cell"); done
exec "${cv[@]}" backup "${args[@]}"
