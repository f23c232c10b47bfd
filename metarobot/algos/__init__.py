"""The meta-learners: the PPO-MAML meta-objective (:mod:`maml`), one module per outer
update (:mod:`promp`, :mod:`reptile`, each with one ``update`` function) and the learned
value baseline of the outer advantages (:mod:`value`)."""
