"""The command line: the only package that imports click.

    app.py          the click group: registers the commands (entry point: main)
    options.py      run's and estimate's click parameters -> RunOptions / EstimateRequest
    run_cmd.py      `run`, `validate`, `estimate`
    folder_cmds.py  `status`, `report`, `gallery`, `prune`, `merge`, `export`, `cancel`
    fake_cmd.py     `fake-server`
    run_flow.py     `run` after planning: budget check, estimate line, confirmation, summary
    batch_cmd.py    `run --mode batch`, `cancel`, `estimate --mode batch`
    common.py       logging, one-line errors (fail, guarded), parsers shared by commands
    messages.py     commands to suggest, rebuilt from click's parsed options

The entry point is batchgen.cli.app:main. Nothing is imported eagerly.
"""
