"""What a run leaves: summary.json as one record, for every writer and every reader.

- summary.py: `Summary` with its parts (Metrics, Speed, Divergence, the theory's Trainability), written whole by a
  lone run and each batched member alike, read by a rerun's resume and skip decisions and by the sweep report.
"""
