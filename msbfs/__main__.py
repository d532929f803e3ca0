import sys

from msbfs.cli import main

sys.exit(main())
