#!/usr/bin/env bash
# Carry an unfinished training run to another machine through git: copy a run directory's files
# into CARRY_DIR, splitting any file over 15 MiB into parts (the repository keeps every file
# under 16 MiB); unpack them there and rerun the training command, which resumes.
#
#   bash scripts/carry-run.sh pack RUN_DIR CARRY_DIR [CHECKPOINT...]
#   bash scripts/carry-run.sh unpack CARRY_DIR RUN_DIR
#
# pack takes every file of RUN_DIR except those in checkpoints/ folders, plus the named
# checkpoints (paths relative to RUN_DIR: the stages still training; a finished stage's weights
# and manifest are enough for scripts/train-default-model.sh to skip it). Files are copied as
# they are, so a weights file that has not changed since the last pack adds nothing to git's
# history. CARRY_DIR is replaced; its SHA256SUMS lists the original files, and unpack checks
# every file it puts back against it.
set -euo pipefail

PART_BYTES=${CARRY_PART_BYTES:-$((15 * 1024 * 1024))}  # a smaller size is for tests

pack() {
    local run="$1" carry="$2"
    shift 2
    local files=() checkpoint file size
    mapfile -t files < <(cd "$run" && find . -path '*/checkpoints' -prune -o -type f -print | sort)
    for checkpoint in "$@"; do
        [ -f "$run/$checkpoint" ] || { echo "carry-run: no checkpoint $run/$checkpoint" >&2; return 1; }
        files+=("./$checkpoint")
    done
    rm -rf "$carry"
    mkdir -p "$carry"
    for file in "${files[@]}"; do
        mkdir -p "$carry/$(dirname "$file")"
        size=$(stat -c %s "$run/$file")
        if [ "$size" -gt "$PART_BYTES" ]; then
            split -b "$PART_BYTES" -d -a 3 "$run/$file" "$carry/$file.part-"
        else
            cp -p "$run/$file" "$carry/$file"
        fi
    done
    (cd "$run" && sha256sum "${files[@]}") >"$carry/SHA256SUMS"
    echo "packed ${#files[@]} files ($(du -sh "$carry" | cut -f1)) into $carry"
}

unpack() {
    local carry="$1" run="$2" sums file
    sums=$(realpath "$carry/SHA256SUMS")  # before the cd below: CARRY_DIR may be relative
    mkdir -p "$run"
    while read -r _ file; do  # "<sha256>  <path>" lines
        mkdir -p "$run/$(dirname "$file")"
        if [ -f "$carry/$file" ]; then
            cp -p "$carry/$file" "$run/$file"
        else
            cat "$carry/$file".part-* >"$run/$file"
        fi
    done <"$carry/SHA256SUMS"
    (cd "$run" && sha256sum --quiet -c "$sums")
    echo "unpacked $(wc -l <"$carry/SHA256SUMS") files into $run"
}

case "${1:-}" in
    pack)
        shift
        [ $# -ge 2 ] || { echo "usage: $0 pack RUN_DIR CARRY_DIR [CHECKPOINT...]" >&2; exit 2; }
        pack "$@"
        ;;
    unpack)
        shift
        [ $# -eq 2 ] || { echo "usage: $0 unpack CARRY_DIR RUN_DIR" >&2; exit 2; }
        unpack "$@"
        ;;
    *)
        echo "usage: $0 pack RUN_DIR CARRY_DIR [CHECKPOINT...] | unpack CARRY_DIR RUN_DIR" >&2
        exit 2
        ;;
esac
