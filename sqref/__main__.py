import sys

from sqref.cli import main

sys.exit(main())
