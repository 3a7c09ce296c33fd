"""The person's path: protect photos (`python -m advwm.protect`).

`cli` is the command (`craft` its `--craft` mode, which runs the per-image pipeline); `paste` is the one
crop -> protect -> paste path every protector (`protectors`) goes through; `photos` writes, scores (`measure`) and
lists (`ledger`: protection.csv; `sheet`: index.html) each protected photo, for the command and for a per-image
run's export (`run_photos`); `faces` finds faces and frames them as the victims saw faces in training.
"""
