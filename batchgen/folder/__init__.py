"""The run folder's files: everything `status` may import, and nothing of the pipeline.

    layout.py      where files go (images/<xx>/, thumbs/<xx>/), file names, now_iso
    runfolder.py   the folder's lock and run.json
    durable.py     atomic_write / replace_atomically, fsync_dir, GroupSync (group commit),
                   the wording of OS errors
    ledger.py      ledger.jsonl: the record format and its readers
    appender.py    ledger.jsonl: LedgerWriter, the one appender, and the torn-tail repair
    records.py     the one builder of ledger lines, live and batch
    intents.py     intents.jsonl: requests that may have been billed
    reviews.py     reviews.jsonl: accepted / rejected verdicts, each about one image (sha256)
    verdicts.py    the verdicts of the current images, jobs to redo, mark, rejected/ kept aside
    current.py     jobs.jsonl: the jobs the manifest holds now
    superseded.py  prune, and images put back when their job is current again
    batches.py     batches.jsonl: batch mode's journal
    merge.py       shards' folders into one
    liveness.py    whether the run run.json calls running is alive
    ownership.py   which manifest a folder belongs to
"""
