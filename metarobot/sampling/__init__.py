"""Data collection: the parallel multi-task sampler (:mod:`sampler`, its worker processes
in :mod:`workers`) and the pre-/post-adaptation rollouts of one meta-iteration
(:mod:`rollouts`)."""
