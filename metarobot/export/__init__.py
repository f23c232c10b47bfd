"""Export: a trained policy and its adaptation step to an ONNX bundle for the device
runtime (:mod:`graphs`: the traced ONNX graphs; :mod:`bundle`: the files, metadata and
manifest, written atomically)."""
