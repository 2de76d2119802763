import sys

from pipeline.search.cli import main

sys.exit(main())
