"""A fleet worker without ComfyUI, to test the fleet's driver alone on a real local Ray cluster
(tests/pbe_core/client/test_fleet.py).

It has :class:`pbe_core.client.fleet.FleetWorker`'s methods and answers. Its "edit" returns the source file's bytes
unchanged (the driver writes them as the row's result, so the test can tell each result came from its own row); a row
whose name contains ``poison`` ends the worker's process at once (``os._exit``), as a crash that takes the actor with
it does; one whose name contains ``hold`` ends only once the file named by ``PBE_STANDIN_RELEASE`` exists. Every call is appended to the file named by ``PBE_STANDIN_LOG`` (one line: event, row, pid), so the test can
count which process ran which row. The real worker (with ComfyUI) is tested in tests/host/test_fleet_host.py.
"""

from __future__ import annotations

import os
import time


def _note(event: str, name: str) -> None:
    with open(os.environ["PBE_STANDIN_LOG"], "a") as f:
        f.write(f"{event} {name} {os.getpid()}\n")


class StandInWorker:
    def __init__(self, spec):
        self.spec = spec

    def start(self) -> dict:
        import ray

        _note("start", self.spec.label)
        where = {"host": "stand-in", "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}
        return {"ok": True, "error": None, "where": where}

    def restart(self) -> dict:
        return self.start()

    def run(self, job, prompt, inputs) -> dict:
        _note("run", job.name)
        if "poison" in job.name:
            os._exit(17)
        while "hold" in job.name and not os.path.exists(os.environ["PBE_STANDIN_RELEASE"]):
            time.sleep(0.02)  # a row that ends only once the test lets it (polling its file, not ordering anything)
        time.sleep(float(os.environ.get("PBE_STANDIN_SECONDS", "0.2")))
        _note("done", job.name)
        return {"status": "done", "outputs": [(".png", inputs.source)], "error": None,
                "prompt_ids": [f"stand-in-{os.getpid()}-{job.name}"], "sent": True, "seconds": 0.2}  # fmt: skip

    def stop(self) -> None:
        _note("stop", self.spec.label)
