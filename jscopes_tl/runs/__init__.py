"""Dataset runs: attribution records for a whole prompt dataset, resumable and data parallel.

* :mod:`~jscopes_tl.runs.prompts`: reading a dataset (JSON lines, CSV, text, ``datasets.Dataset``);
* :mod:`~jscopes_tl.runs.storage`: the record and error schemas, Parquet shards committed by
  atomic rename;
* :mod:`~jscopes_tl.runs.manifest`: what identifies a run (arguments, dataset, model);
* :mod:`~jscopes_tl.runs.distributed`: ranks, devices and barriers on ``torch.distributed``;
* :mod:`~jscopes_tl.runs.runner`: :func:`run_dataset`, the loop that ties them together;
* :mod:`~jscopes_tl.runs.faithfulness`: :func:`run_faithfulness`, ``jscopes eval``'s rows by the
  same loop.
"""

from jscopes_tl.runs.manifest import RunConflictError
from jscopes_tl.runs.storage import DamagedRunError, RunInUseError
from jscopes_tl.runs.faithfulness import FaithfulnessRunSummary, run_faithfulness
from jscopes_tl.runs.runner import RunSummary, run_dataset

__all__ = [
    "DamagedRunError", "FaithfulnessRunSummary", "RunConflictError", "RunInUseError", "RunSummary", "run_dataset",
    "run_faithfulness",
]
