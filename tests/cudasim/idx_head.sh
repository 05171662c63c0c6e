#!/bin/sh
# idx_head.sh SRC DST N_TRAIN N_TEST: the first N_TRAIN training and N_TEST test images and
# labels of the MNIST-layout IDX set in SRC (gzipped), written to DST as plain IDX files whose
# headers give the new counts. A small real data set for the simulated GPU's end-to-end runs.
set -eu
src=$1 dst=$2
mkdir -p "$dst"
# be32 N: N as 4 big-endian bytes
be32() { printf "$(printf '\\%03o\\%03o\\%03o\\%03o' $(($1 >> 24 & 255)) $(($1 >> 16 & 255)) \
  $(($1 >> 8 & 255)) $(($1 & 255)))"; }
# head_idx NAME N HEADER_BYTES ITEM_BYTES
head_idx() {
  in="$src/$1.gz" out="$dst/$1"
  [ -r "$in" ] || { echo "idx_head.sh: cannot read $in" >&2; exit 1; }
  {
    gzip -dc "$in" | head -c 4
    be32 "$2"
    gzip -dc "$in" | tail -c +9 | head -c $(($3 - 8 + $2 * $4))
  } > "$out"
  [ "$(wc -c < "$out")" -eq $(($3 + $2 * $4)) ] ||
    { echo "idx_head.sh: $in holds fewer than $2 items" >&2; exit 1; }
}
head_idx train-images-idx3-ubyte "$3" 16 784
head_idx train-labels-idx1-ubyte "$3" 8 1
head_idx t10k-images-idx3-ubyte "$4" 16 784
head_idx t10k-labels-idx1-ubyte "$4" 8 1
