"""A sweep: its jobs, and the report written when it ends.

- job.py: one job from its folder to its end line (claimed, refused, skipped, resumed or run): the protocol of a
  lone run and of every launcher's job;
- report.py: the sweep report (report.md, its table and figures) and the sections below, each where it applies;
- phase.py: a section: the trainability phase diagram, accuracy over (sigma_w^2, depth) against 6 xi_c;
- speed_report.py: a section: the measured learning speed against the Jacobian's predicted spread;
- architecture_report.py: a section: the init x architecture heat map and its answer.
"""
