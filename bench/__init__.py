"""`make bench`: every target of the performance spec, measured as a ratio against a reference
run in the same process tree, on the same throwaway durable Postgres (without fsync in quick mode),
with the same input.

`python -m bench` runs all metrics and writes bench/RESULTS.md; `python -m bench ingress engine`
runs some; `--quick` (or BENCH_QUICK=1) uses tiny sizes to prove the scripts work.
"""
