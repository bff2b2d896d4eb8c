"""One run, from its settings to its summary.json.

- parts.py: a run's parts built from its Settings (data, initialized model under Lightning, layer recorder,
  trainability prediction, the process-wide state a run sets and restores), for a lone run and a batched member;
- train.py: one lone run: its parts under a Trainer with its checkpoints; train, test, summarize;
- lifecycle.py: how a run ends: RunRecord says running, then ok / diverged / interrupted / failed and its one line;
  the failure policy of the script and the launchers;
- stopping.py: a run stopped from outside (SIGTERM, submitit's signal) between two steps, as Ctrl-C stops it;
- checkpoints.py: a run's checkpoints, written whole or not at all; the newest usable one a resumed run goes on from;
- logger.py: the run's TensorBoard logger and its HParams row;
- progress.py: training's progress in optimizer steps: a bar in a terminal, a line every N steps elsewhere;
- folder.py: a job's folder as the processes that may run it share it: its lock, what an earlier attempt left.
"""
