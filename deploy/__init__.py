"""Torch-free on-device runtime: run and adapt an exported metarobot policy (numpy + onnxruntime)."""
