"""Edit photos with Paint by Example through a running ComfyUI, headless. Standard library only.

    python -m pbe_core.client edit SOURCE MASK EXEMPLAR [-o OUT] [--seed N --steps N --cfg X --sampler NAME
                                                         --model FILE --workflow NAME|FILE --set NODE.INPUT=VALUE]
    python -m pbe_core.client batch FOLDER|ROWS.csv [--exemplar FILE] [-o OUT] [same options]

Common options: ``--server HOST:PORT`` (default 127.0.0.1:8188), ``--client-id``, ``--timeout`` (seconds per edit).

Each edit uploads the source and the exemplar(s) (``/upload/image``) and the mask (``/upload/mask``: ComfyUI writes
it into the source's alpha, exactly where its mask editor leaves a painted mask, so the API workflows are the UI
templates' own graphs), queues an API workflow from ``workflows/api/`` with the command line's overrides, follows
``/ws`` with a progress bar, and downloads what its SaveImage nodes wrote (``/history``, ``/view``). A failure exits
non-zero with the server's message.

The mask is a PNG, white (or opaque white on transparent) = the region to replace, the source's size. A workflow
that has a ``LoadImageMask`` node titled ``Mask`` gets the mask file uploaded as an image there instead (any format
the server reads; pick the channel in that node).

Batch input: a CSV of ``source,mask,exemplar[,seed]`` rows (paths relative to the CSV; a header row is optional), or a
folder where every ``NAME.png|jpg|jpeg|webp`` is a source with its mask ``NAME_mask.png`` and its exemplar
``NAME_exemplar.*`` (or ``--exemplar`` for all). A bad row is reported and skipped; the run ends with a report
(also written to ``OUT/report.json``) and exits 1 if any row failed.

Modules: ``api`` (HTTP and ``/ws``: queue, follow, download), ``workflow`` (API workflows, node titles, overrides),
``jobs`` (one edit, the rows of a batch), ``cli`` (the command line), ``ws`` (WebSocket framing), ``png`` (the mask
PNG codec and image headers). Nothing here imports torch, numpy or ComfyUI.
"""
