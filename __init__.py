"""Paint by Example for ComfyUI.

ComfyUI imports this file as the pack's entry point. It exports only the V3 ``comfy_entrypoint``:
the node modules (which import ``comfy``) load when the host asks for them, so ``pbe_core`` stays
importable, and testable, without ComfyUI.
"""


async def comfy_entrypoint():
    """Return the pack's ``ComfyExtension`` (called once by ComfyUI at start-up)."""
    from .nodes import PaintByExampleExtension

    return PaintByExampleExtension()
