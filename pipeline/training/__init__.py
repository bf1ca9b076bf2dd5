"""Training runs: tensors from a catalog and split (``prepare``), negative sampling,
device and thread handling, the run record and run-folder file names (``record``, no
torch), checkpoints, the trainer and the public ``train_model`` / ``evaluate_run`` API.

May import: ``storage``, ``models``, ``pipeline.settings``, ``pipeline.data``,
``pipeline.evaluation``.
"""
