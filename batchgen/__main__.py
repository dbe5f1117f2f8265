from batchgen.cli.app import main

main()
