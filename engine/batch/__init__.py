"""Many-asset runs above the door: a manifest of assets (:mod:`.manifest`), their state in the
output folder and the resume rules (:mod:`.state`, :mod:`.run`), and the executors that run them:
``local`` (:class:`.run.LocalExecutor`, in this process) and ``ray``
(:mod:`.ray_executor`, optional). Each asset is one call of :func:`engine.api.stylize` through
:class:`.runner.AssetRunner`. ``python -m engine batch`` is the command line; docs/batch.md the guide.
"""
