import sys

from ngram_dask.cli.main import main

sys.exit(main())
