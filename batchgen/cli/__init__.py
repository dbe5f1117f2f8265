"""The command line: the only package that imports click.

    app.py        the click group and its commands: parse, call the library, print
    common.py     logging, one-line errors (fail, guarded), parsers shared by commands
    run_flow.py   `run` after planning: budget check, estimate line, confirmation, summary
    batch_cmd.py  `run --mode batch`, `cancel`, `estimate --mode batch`
    messages.py   commands to suggest, rebuilt from click's parsed options

The entry point is batchgen.cli.app:main. Nothing is imported eagerly.
"""
