"""Running a training: the meta-training loop (:mod:`trainer`), its config (:mod:`config`),
checkpoints (:mod:`checkpoint`), run log (:mod:`runlog`), observation statistics
(:mod:`normalizer`) and the evaluation of a trained run (:mod:`evaluate`)."""
