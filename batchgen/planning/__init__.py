"""Planning: which jobs still need a request, judged by the ledger, before anything is sent.

    plan.py      the ledger index, the plan (count and stream what to send), orphans
    tally.py     the validation pass's visit: counts, current jobs, the resume line
    preview.py   --preview N: the N pending jobs that show every row and var value
    prepare.py   everything before the first request, in one pass over the manifest
    session.py   the endpoint (or the fake server), signals, what run.json records
"""
