"""From data set to tensors: manifests and adapters, label rules, features, decoding, the segment-row format,
the feature cache, and Ray Data ingest (``ingest.py``, the only module here that imports Ray)."""
