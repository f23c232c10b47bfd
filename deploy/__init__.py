"""Torch-free on-device runtime: run and adapt an exported metarobot policy.

numpy + onnxruntime only. See ``docs/deploy.md``::

    from deploy import AdaptivePolicy
    policy = AdaptivePolicy.load("bundle/", family="reach", seed=0)
    policy = AdaptivePolicy.load("reach", seed=0)   # a bundle shipped in assets/bundles/
"""

from deploy.bundle import Bundle, BundleError, load_bundle, resolve_bundle, shipped_bundles
from deploy.controller import GymController, LoopReport, RobotController, run_control_loop
from deploy.runtime import AdaptivePolicy, AdaptReport, SafetyConfig, TrialReport

__all__ = ["AdaptReport", "AdaptivePolicy", "Bundle", "BundleError", "GymController",
           "LoopReport", "RobotController", "SafetyConfig", "TrialReport", "load_bundle",
           "resolve_bundle", "run_control_loop", "shipped_bundles"]
