"""Fuzz targets for every input surface Ferry exposes.

`python -m tests.fuzz NAME --cases N` (NAME: json, sdp, stun, rtp, rtcp, turn) runs one
target with a seeded mutation engine and prints a JSON summary; tests/test_fuzz.py runs
the same targets under hypothesis in CI. See targets.py for what each one feeds and
which properties it checks.
"""
