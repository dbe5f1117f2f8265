"""Batch mode: the same jobs as live mode, sent through the Gemini Batch API at half the price.

    wire.py     the Files API and Batch API calls, errors translated into batchgen's tree
    journal.py  the run folder's durable record of every batch (intent, name, state, collected)
    submit.py   request files, reference uploads, the never-twice create
    collect.py  result files streamed into the store and the ledger, as live results are
    driver.py   one ``run --mode batch`` (and ``--wait``) from top to bottom; ``cancel``
    command.py  the CLI's side: ``run --mode batch``, ``cancel``, ``estimate --mode batch``
    status.py   the folder's batches for ``status`` (journal only, nothing of the pipeline)

Imported lazily by the CLI: live mode never loads any of it.
"""
