"""Live mode: the plan's jobs sent through generateContent by a bounded pool.

    runner.py    one live run from its plan to its result
    pool.py      the workers, the queue, stopping, the retry loop
    attempt.py   one attempt at one job, with everything it may cost
    recorder.py  a job's outcome recorded: image and sidecar durable, then the ledger line
    outcome.py   the values the parts share (StopReason, RunResult, JobState)
    budget.py    what the folder has spent, may have been billed, and the cap
"""
