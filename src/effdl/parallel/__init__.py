"""Training across devices with ``torch.distributed`` (``chap-parallel``): data parallel (DDP), sharded data
parallel (ZeRO-1/2/3), tensor parallel and pipeline parallel strategies that take a model and batches, the
collectives they rest on, and a cost model that extrapolates them to many GPUs.

Run them with ``torchrun --nproc-per-node N -m effdl.parallel STRATEGY ...`` (``__main__.py`` wires the book's
models and data in), or from Python with :func:`effdl.parallel.group.run_workers`.
"""
