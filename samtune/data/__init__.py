"""Everything about data: which sets exist and where they live (``catalogue``), image
folders (``folders``), sets held in device memory (``tensors``) and read from disk
(``streaming``), the training loaders on one contract (``loaders``, ``worker_loader``),
augmentations (``augment``, ``device_augment``), dataset records for the tracking store
(``records``), and what a trial asks of its data (``trial_data``).

Importing the package imports no torch: the catalogue is read by the search spec and the
pre-launch checks, which run without it.  Import the loaders from their modules.
"""
