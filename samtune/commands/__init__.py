"""What the CLI dispatches to, one module per command that runs or re-measures trials:
``train``, ``replay``, ``sharpness`` and ``interpolate``.  Each opens the trial's data
once, runs it through :mod:`samtune.trial` and records it with :mod:`samtune.tracking`."""
