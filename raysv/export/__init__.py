"""Shipping an encoder: ONNX and TorchScript export with the front-end in the graph,
a model card, and scoring with the exported model (``raysv export``, ``raysv verify``,
``raysv embed --model``).

- :mod:`raysv.export.frontend`: waveform -> fbank as exportable torch, the length policy.
- :mod:`raysv.export.graph`: ONNX / TorchScript writers.
- :mod:`raysv.export.card`: thresholds and the ``model.json`` card.
- :mod:`raysv.export.bundle`: ``export_model``, the whole export into one folder.
- :mod:`raysv.export.runtime`: ``ExportedModel``: an exported folder on ONNX Runtime.
- :mod:`raysv.export.verify`: scoring a pair or a trial list from audio.
"""
