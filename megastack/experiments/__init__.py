"""Growth experiments: held-out document splits, FLOPs accounting, speedups and plots.

Used by examples/pretrain_tiny_gstack.sh and benchmarks/growth/ through
`python -m megastack.experiments.<module>`.
"""
