"""Quality scorers (Movie Gen's visual, motion, text and audio filters) over one shared decode.

``frames.decode_for_analysis`` decodes a clip once at analysis size and rate; every scorer reads
that ``AnalysisClip`` and returns named scores. No scorer opens the media file again.
"""
