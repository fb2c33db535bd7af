"""Edit photos with Paint by Example through ComfyUI, headless. Standard library only.

    python -m pbe_core.client edit SOURCE MASK EXEMPLAR [EXEMPLAR ...] [-o OUT] [--seed N --steps N --cfg X
                                   --sampler NAME --model FILE --workflow NAME|FILE --set NODE.INPUT=VALUE --force]
    python -m pbe_core.client batch FOLDER|ROWS.csv [--exemplar FILE ...] [-o OUT] [--report FILE] [same options]
    python -m pbe_core.client batch FOLDER|ROWS.csv [...] --ray [ADDRESS] [--workers N --gpus-per-worker X
                                   --cpus-per-worker N --retries N --worker-dir DIR --ray-dashboard --ray-temp-dir DIR]

Where: ``--server HOST:PORT`` (a running ComfyUI) or ``--comfyui PATH`` (a private one for the run, ``embedded``).
Common options: ``--client-id`` (default: random per run), ``--timeout`` (seconds per edit once queued),
``--reconnect-wait`` (seconds to wait for a server that went away, default 120).

Each edit uploads the source and the exemplar(s) (``/upload/image``) and the mask (``/upload/mask``: ComfyUI writes
it into the source's alpha, exactly where its mask editor leaves a painted mask, so the API workflows are the UI
templates' own graphs), queues an API workflow from ``workflows/api/`` with the command line's overrides, follows
``/ws`` with a progress bar and ``/history`` (which has the last word), and downloads what its SaveImage nodes wrote
(``/view``). Results are written whole or not at all, with a sidecar that records the settings that made them
(``results``); a rerun skips the rows already done with the same settings (``--force`` does them again). If the
server goes away, the client waits for it (visible, bounded retries) and goes on: a prompt the server still knows is
followed to its end, one it lost is queued again. A failure exits non-zero with the server's message.

The mask is a PNG, white (or opaque white on transparent) = the region to replace, the source's size. A workflow
that has a ``LoadImageMask`` node titled ``Mask`` gets the mask file uploaded as an image there instead (any format
the server reads; pick the channel in that node).

Batch input: a CSV (paths relative to it) of ``source,mask,exemplar[,seed]`` rows, or with a header row naming the
columns ``source, mask, exemplar, exemplar2, exemplar3, ..., seed`` (any order) for workflows with several
exemplars; or a folder where every ``NAME.png|jpg|jpeg|webp`` is a source with its mask ``NAME_mask.png`` and its
exemplars ``NAME_exemplar.*``, ``NAME_exemplar2.*``, ... (or ``--exemplar``, repeated for several, for all). A bad
row is reported and skipped. The batch stops early only when no later row could succeed (the server gone, the
output folder not writable) or on Ctrl-C; the report (``OUT/report.json``) is written however it ends. Exit status:
0 all rows succeeded, 1 some failed, 2 no server to work with, 130 interrupted.

Many workers (``--ray``, Ray being an optional extra): the rows run on Ray actors that each own one headless ComfyUI,
a private one (one per GPU, or CPU workers) or one per ``--server``; the results are written here as in a one-server
batch, and rows whose worker died go to another (``fleet``, imported only with ``--ray``).

Modules, by role: ``cli`` (the command line), ``fleet`` (``--ray``, imported only then: ``fleet.driver`` the loop on
this machine, ``fleet.worker`` the Ray actor with its ComfyUI, ``fleet.cluster`` starting and stopping Ray, its folder
and leftover processes), ``jobs`` (one edit, the rows of a batch), ``api`` (HTTP and ``/ws``: queue, follow, download,
wait for a lost server), ``embedded`` (a private ComfyUI), ``workflow`` (reading API workflows, their slots, node
titles, overrides), ``settings`` (a row and the run's settings), ``report`` (the batch report, one schema for one server
and the fleet), ``progress`` (the progress lines), ``results`` (which rows are done, atomic result writes), ``png`` (the
mask PNG codec and image headers), ``ws`` (WebSocket framing), ``errors``. Each imports only modules listed after it
(``tests/test_layout.py`` checks there is no circle). Nothing here imports torch, numpy or ComfyUI, and nothing but
``fleet`` imports Ray.
"""
