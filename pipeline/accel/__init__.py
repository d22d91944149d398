"""Speed machinery with no knowledge of the domain: the batch pool and its loader, shared memory,
overlap threads and writer processes, host buffers, CUDA graphs and the GPU resize.

Nothing here imports another package of the pipeline; domain code calls it through the small
interfaces each module documents.
"""
