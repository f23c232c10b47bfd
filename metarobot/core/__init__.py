"""The math every part of metarobot shares: the policy as a function of an explicit
parameter dict (:mod:`policy`), the inner adaptation step (:mod:`inner`, also what the ONNX
adapt graph runs), advantages with the per-task linear baseline (:mod:`advantages`) and the
episode batch (:mod:`batch`)."""
