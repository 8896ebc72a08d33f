"""Patch sizes of the Python delta peers for one pair, for `tern delta bench`.

Usage: python delta-peers.py OLD NEW
Prints one line per peer: `name<TAB>patch bytes`. Run with the peers venv's Python
(scripts/install-delta-peers.sh installs bsdiff4, detools and hdiffpatch there).
Every patch is applied again by its own tool and checked against NEW.
"""
import io
import sys

import bsdiff4
import detools
import hdiffpatch


def detools_patch(old, new, compression):
    out = io.BytesIO()
    detools.create_patch(io.BytesIO(old), io.BytesIO(new), out, compression=compression)
    patch = out.getvalue()
    back = io.BytesIO()
    detools.apply_patch(io.BytesIO(old), io.BytesIO(patch), back)
    assert back.getvalue() == new, "detools patch does not apply"
    return patch


def main():
    old = open(sys.argv[1], "rb").read()
    new = open(sys.argv[2], "rb").read()
    b = bsdiff4.diff(old, new)
    assert bsdiff4.patch(old, b) == new, "bsdiff4 patch does not apply"
    peers = [
        ("bsdiff4", b),
        ("detools-lzma", detools_patch(old, new, "lzma")),
        ("detools-heatshrink", detools_patch(old, new, "heatshrink")),
        # validate=True (the default) applies each patch with HDiffPatch's own applier.
        ("hdiffpatch-lzma2", hdiffpatch.diff(old, new, hdiffpatch.Lzma2Config())),
        ("hpatchlite-tuz", hdiffpatch.diff_lite(old, new, compression="tuz")),
    ]
    for name, patch in peers:
        print(f"{name}\t{len(patch)}")


main()
