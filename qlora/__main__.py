"""`python -m qlora ...`: the command line (`qlora --help`)."""

from qlora.cli.main import main

raise SystemExit(main())
