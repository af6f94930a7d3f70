"""On-demand benchmarks of bora_ref's fast path against LoRA and PEFT (``python -m benchmarks``).

Not part of the unit tests: speed and memory are measured here, side by side with a baseline in
the same process, and reported as ratios. See ``docs/benchmarks.md`` for the tables and
``python -m benchmarks --help`` for the options.
"""
