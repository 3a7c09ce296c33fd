"""A run's files: everything advwm writes into a run folder, and how it survives kills, full disks and second runs.

- `folder`: one run per folder (a lock held from the first write; freed when its process dies);
- `io`: atomic writes in order (metrics before pictures), a full disk said in one line;
- `checkpoints`: Lightning's checkpoints written through `io` (a kill never leaves half a `last.ckpt`);
- `watermark_file`: what `watermark.pt` holds and the one reader of it;
- `loggers`: CSV and W&B loggers, the run's console lines and log file.
"""
