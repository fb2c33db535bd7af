"""Photo tools: masks (grow, feather, placeholders), crop and stitch windows, colour matching, and the checks on the
images and masks the nodes receive. Plain tensor work: imports nothing else of ``pbe_core``."""
