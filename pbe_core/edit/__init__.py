"""The edit: planning the windows the model edits and pasting the result back (``plan``), the edit conditioning PbE's
UNet reads (``conditioning``), and the official inference sampler (``sampling``). Uses ``photo`` (and may use
``exemplar`` and ``weights``) below it."""
