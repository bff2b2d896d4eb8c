"""What a run measures, beside what the theory predicts: layer statistics, learning speed, their figures.

- stats.py: per-layer statistics as plain tensor functions (GROUPS: what each group records);
- overlay.py: the theory at step 0 next to what a run's layer statistics measured;
- recorder.py: LayerRecorder, which captures and writes the layer statistics (TensorBoard, CSV, figures); no
  Lightning in it;
- layer_stats.py: LayerStats, the thin Lightning callback that feeds a run's recorder;
- speed.py: learning speed: SpeedTracker (accuracy every N steps, the first step at the target) and LearningSpeed,
  its thin Lightning callback; a batched group feeds its members' trackers;
- figures.py: depth-profile and heat-map figures.
"""
