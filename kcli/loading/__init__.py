"""Files and tensors only: checkpoint folders, configs, safetensors, meta-device assignment, the cache.

Import the submodules directly (``kcli.loading.weights``, ``kcli.errors`` ...): this package
imports nothing itself, so the command line can use the error types without loading torch.
"""
