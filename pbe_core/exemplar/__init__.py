"""The exemplar: its preprocessing (the CLIP crop and normalisation), its encoder (CLIP vision and the PbE head,
loaded through ``weights``), and mixing several exemplars into one conditioning."""
