"""`python -m lenet ...` is the same as the `lenet` console script."""

from lenet.cli import main

raise SystemExit(main())
