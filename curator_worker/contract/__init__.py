"""The pipeline contract: what a user writes and what travels to the workers.

- :mod:`~curator_worker.contract.pipeline`: ``Source``, ``Filter``, ``Sink`` and
  ``Pipeline`` (physicsnemo-curator's ``core.base``), built from
  :mod:`~curator_worker.contract.params` (``Param``, ``REQUIRED``, the ``Component`` base)
  and run one index at a time by :mod:`~curator_worker.contract.chain`.
- :mod:`~curator_worker.contract.spec`: a pipeline as a YAML/JSON spec, how it reaches
  workers on other machines (files read within limits by
  :mod:`~curator_worker.contract.spec_file`).
- :mod:`~curator_worker.contract.planning`: which indices run together (partitions,
  batch groups, index selections).

Every backend, local or Celery, runs what this package describes.
"""
